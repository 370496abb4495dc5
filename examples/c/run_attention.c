/* A C host for libtessera_ort.so: ONNX Runtime's C API, RegisterCustomOpsLibrary_V2,
 * one float32 run. Build and run (examples/c/README.md; tested by scripts/test.d/61-loading.sh):
 *
 *   run_attention MODEL.onnx LIBRARY.so OUT.f32 NAME=B,H,S,D:FILE.f32...
 *
 * feeds each named input from a raw little-endian float32 file of the given
 * shape, and writes output 0 to OUT.f32 raw. ORT errors go to stderr with
 * exit status 1. The OrtApi positions come from ort_api_slots.h (generated
 * from the ort-sys crate's bindings, since the onnxruntime wheel has no
 * header); the signatures below follow onnxruntime_c_api.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ort_api_slots.h"

typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtSession OrtSession;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtValue OrtValue;

typedef struct OrtApiBase {
    const void *const *(*GetApi)(uint32_t version); /* the OrtApi table, NULL if too new */
    const char *(*GetVersionString)(void);
} OrtApiBase;
const OrtApiBase *OrtGetApiBase(void); /* exported by libonnxruntime */

enum { ORT_API_VERSION = 17, /* ORT >= 1.17, like libtessera_ort.so */
       ORT_LOGGING_LEVEL_WARNING = 2, OrtDeviceAllocator = 0, OrtMemTypeDefault = 0,
       ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1 };

static const void *const *api;
#define ORT(name, type) ((type)api[ORT_SLOT_##name])

typedef const char *(*GetErrorMessage_t)(const OrtStatus *);
typedef void (*ReleaseStatus_t)(OrtStatus *);

static void check(OrtStatus *status, const char *what) {
    if (status) {
        fprintf(stderr, "run_attention: %s: %s\n", what, ORT(GetErrorMessage, GetErrorMessage_t)(status));
        ORT(ReleaseStatus, ReleaseStatus_t)(status);
        exit(1);
    }
}

enum { MAX_INPUTS = 8 };

int main(int argc, char **argv) {
    if (argc < 5 || argc - 4 > MAX_INPUTS) {
        fprintf(stderr, "usage: %s MODEL.onnx LIBRARY.so OUT.f32 NAME=B,H,S,D:FILE.f32...\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *library = argv[2], *out_path = argv[3];
    int n_in = argc - 4;

    api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (!api) {
        fprintf(stderr, "run_attention: ONNX Runtime %s has no C API %d\n", OrtGetApiBase()->GetVersionString(),
                ORT_API_VERSION);
        return 1;
    }
    OrtEnv *env;
    check(ORT(CreateEnv, OrtStatus *(*)(int, const char *, OrtEnv **))(ORT_LOGGING_LEVEL_WARNING, "c-host", &env),
          "CreateEnv");
    OrtSessionOptions *opts;
    check(ORT(CreateSessionOptions, OrtStatus *(*)(OrtSessionOptions **))(&opts), "CreateSessionOptions");
    check(ORT(SetIntraOpNumThreads, OrtStatus *(*)(OrtSessionOptions *, int))(opts, 2), "SetIntraOpNumThreads");
    /* The one line a host adds: ORT dlopens the library and calls its RegisterCustomOps. */
    check(ORT(RegisterCustomOpsLibrary_V2, OrtStatus *(*)(OrtSessionOptions *, const char *))(opts, library),
          "RegisterCustomOpsLibrary_V2");
    OrtSession *session;
    check(ORT(CreateSession, OrtStatus *(*)(OrtEnv *, const char *, OrtSessionOptions *, OrtSession **))(
              env, model, opts, &session),
          "CreateSession");

    OrtMemoryInfo *cpu;
    check(ORT(CreateCpuMemoryInfo, OrtStatus *(*)(int, int, OrtMemoryInfo **))(OrtDeviceAllocator, OrtMemTypeDefault,
                                                                               &cpu),
          "CreateCpuMemoryInfo");
    const char *names[MAX_INPUTS];
    OrtValue *inputs[MAX_INPUTS];
    float *buffers[MAX_INPUTS];
    int64_t shapes[MAX_INPUTS][4];
    for (int i = 0; i < n_in; i++) {
        char *arg = argv[4 + i], *eq = strchr(arg, '='), *colon = strchr(arg, ':');
        int64_t *shape = shapes[i];
        if (!eq || !colon || sscanf(eq + 1, "%ld,%ld,%ld,%ld", &shape[0], &shape[1], &shape[2], &shape[3]) != 4) {
            fprintf(stderr, "run_attention: bad input %s (want NAME=B,H,S,D:FILE.f32)\n", arg);
            return 2;
        }
        *eq = '\0';
        names[i] = arg;
        size_t n = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
        buffers[i] = malloc(n * sizeof(float));
        FILE *f = fopen(colon + 1, "rb");
        if (!f || fread(buffers[i], sizeof(float), n, f) != n) {
            fprintf(stderr, "run_attention: cannot read %zu floats from %s\n", n, colon + 1);
            return 1;
        }
        fclose(f);
        check(ORT(CreateTensorWithDataAsOrtValue,
                  OrtStatus *(*)(OrtMemoryInfo *, void *, size_t, const int64_t *, size_t, int, OrtValue **))(
                  cpu, buffers[i], n * sizeof(float), shape, 4, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &inputs[i]),
              "CreateTensorWithDataAsOrtValue");
    }

    const char *out_name = "Y";
    OrtValue *y = NULL;
    check(ORT(Run, OrtStatus *(*)(OrtSession *, const void *, const char *const *, const OrtValue *const *, size_t,
                                  const char *const *, size_t, OrtValue **))(
              session, NULL, names, (const OrtValue *const *)inputs, (size_t)n_in, &out_name, 1, &y),
          "Run");
    /* Y has Q's shape [B, Hq, S, D] (here Dv = D): the first input's. */
    float *data;
    check(ORT(GetTensorMutableData, OrtStatus *(*)(OrtValue *, void **))(y, (void **)&data), "GetTensorMutableData");
    size_t n_out = (size_t)(shapes[0][0] * shapes[0][1] * shapes[0][2] * shapes[0][3]);
    FILE *f = fopen(out_path, "wb");
    if (!f || fwrite(data, sizeof(float), n_out, f) != n_out) {
        fprintf(stderr, "run_attention: cannot write %s\n", out_path);
        return 1;
    }
    fclose(f);
    printf("run_attention: ONNX Runtime %s ran %s with %s: wrote %zu floats to %s\n",
           OrtGetApiBase()->GetVersionString(), model, library, n_out, out_path);

    ORT(ReleaseValue, void (*)(OrtValue *))(y);
    for (int i = 0; i < n_in; i++) {
        ORT(ReleaseValue, void (*)(OrtValue *))(inputs[i]);
        free(buffers[i]);
    }
    ORT(ReleaseMemoryInfo, void (*)(OrtMemoryInfo *))(cpu);
    ORT(ReleaseSession, void (*)(OrtSession *))(session);
    ORT(ReleaseSessionOptions, void (*)(OrtSessionOptions *))(opts);
    ORT(ReleaseEnv, void (*)(OrtEnv *))(env);
    return 0;
}

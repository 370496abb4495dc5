/* Semihosting console and exit for the C example (startup.c). */
#ifndef SEMIHOST_H
#define SEMIHOST_H
int semihost(int op, const void *arg);
void sh_print(const char *s);
void sh_print_int(long long x);
void sh_exit(int code);
#endif

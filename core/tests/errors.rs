//! Invalid specs and buffers are refused with an error that names the input.

use tessera_core::{kernel::Portable, Attention, AttentionSpec, Error, Flash, MaskSpec, Tensor};

type F = Flash<Portable, 8, 16>;

#[test]
fn bad_specs_are_refused() {
    let buf = vec![0.5f32; 4096];
    let ok = AttentionSpec::bhsd(1, 4, 2, 8, 8, 4, 4);
    let cases: Vec<(AttentionSpec, MaskSpec<'_>, &str)> = vec![
        (
            AttentionSpec { kv_heads: 3, ..ok },
            MaskSpec::NONE,
            "kv_num_heads",
        ),
        (
            AttentionSpec { kv_heads: 0, ..ok },
            MaskSpec::NONE,
            "kv_num_heads",
        ),
        (
            AttentionSpec { head_dim: 0, ..ok },
            MaskSpec::NONE,
            "head dimension",
        ),
        (ok.with_scale(f32::NAN), MaskSpec::NONE, "scale"),
        (ok.with_scale(-1.0), MaskSpec::NONE, "scale"),
        (ok.with_softcap(-2.0), MaskSpec::NONE, "softcap"),
        (ok, MaskSpec::NONE.window(-2, 3), "window"),
        (ok, MaskSpec::NONE.window(3, -5), "window"),
        (
            AttentionSpec {
                q_len: 1 << 20,
                ..ok
            },
            MaskSpec::NONE,
            "Q: needs",
        ),
        (
            AttentionSpec {
                kv_len: usize::MAX / 2,
                ..ok
            },
            MaskSpec::NONE,
            "overflows",
        ),
    ];
    for (spec, mask, want) in cases {
        let err = Attention::new(&spec, &mask, &buf, &buf, &buf).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(want),
            "{spec:?}: message {msg:?} lacks {want:?}"
        );
    }
}

#[test]
fn bad_mask_buffers_are_refused() {
    let buf = vec![0.5f32; 4096];
    let spec = AttentionSpec::bhsd(2, 2, 2, 8, 8, 4, 4);
    let lens = [9usize, 3];
    let err = Attention::new(
        &spec,
        &MaskSpec::NONE.kv_lens(&lens, false),
        &buf,
        &buf,
        &buf,
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::KvLenOutOfRange {
            batch: 0,
            len: 9,
            kv_len: 8
        }
    );
    let short = [1usize];
    let err = Attention::new(
        &spec,
        &MaskSpec::NONE.kv_lens(&short, false),
        &buf,
        &buf,
        &buf,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        Error::WrongLength {
            tensor: Tensor::KvLens,
            ..
        }
    ));
    let seg = [0i32; 15];
    let err = Attention::new(
        &spec,
        &MaskSpec::NONE.segments(&seg, &seg),
        &buf,
        &buf,
        &buf,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        Error::WrongLength {
            tensor: Tensor::Segments,
            ..
        }
    ));
    let m = [true; 63];
    let strides = tessera_core::MaskStrides::broadcast(1, 1, 8, 8);
    let err = Attention::new(
        &spec,
        &MaskSpec::NONE.dense(tessera_core::DenseMask::Bool(&m, strides)),
        &buf,
        &buf,
        &buf,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "attn_mask: needs 64 elements, got 63");
}

#[test]
fn bad_outputs_and_scratch_are_refused() {
    let buf = vec![0.5f32; 256];
    let spec = AttentionSpec::bhsd(1, 2, 2, 8, 8, 4, 4);
    let att = Attention::new(&spec, &MaskSpec::NONE, &buf, &buf, &buf).unwrap();
    let f = F::new(Portable);
    let mut scratch = vec![0.0; F::scratch_len(4, 4)];
    let mut y = vec![0.0f32; 63];
    assert!(matches!(
        f.run(&att, &mut y, None, &mut scratch),
        Err(Error::TooShort {
            tensor: Tensor::Y,
            ..
        })
    ));
    let mut y = vec![0.0f32; 64];
    let mut lse = vec![0.0; 15];
    assert!(matches!(
        f.run(&att, &mut y, Some(&mut lse), &mut scratch),
        Err(Error::WrongLength {
            tensor: Tensor::Lse,
            ..
        })
    ));
    let mut small = vec![0.0; F::scratch_len(4, 4) - 1];
    assert!(matches!(
        f.run(&att, &mut y, None, &mut small),
        Err(Error::TooShort {
            tensor: Tensor::Scratch,
            ..
        })
    ));
    let mut st = Default::default();
    assert_eq!(
        f.tile(&att, 0, 2, 0, 0..8, &mut scratch, &mut st)
            .unwrap_err(),
        Error::TileOutOfRange
    );
    assert_eq!(
        f.tile(&att, 0, 0, 1, 0..8, &mut scratch, &mut st)
            .unwrap_err(),
        Error::TileOutOfRange
    );
    assert_eq!(
        f.tile(&att, 0, 0, 0, 4..9, &mut scratch, &mut st)
            .unwrap_err(),
        Error::TileOutOfRange
    );
    assert_eq!(
        f.tile_selected(&att, 0, 0, 0, &[1], &mut scratch, &mut st)
            .unwrap_err(),
        Error::TileOutOfRange
    );
    // A tile listed twice would be counted twice: refused.
    let spec16 = AttentionSpec::bhsd(1, 1, 1, 8, 32, 4, 4);
    let att16 = Attention::new(&spec16, &MaskSpec::NONE, &buf, &buf, &buf).unwrap();
    for list in [&[0usize, 0][..], &[1, 0]] {
        assert_eq!(
            f.tile_selected(&att16, 0, 0, 0, list, &mut scratch, &mut st)
                .unwrap_err(),
            Error::TileOutOfRange
        );
    }
    assert!(f
        .tile_selected(&att16, 0, 0, 0, &[0, 1], &mut scratch, &mut st)
        .is_ok());
}

#[test]
fn packed_entry_refuses_short_panels_and_unaligned_keys() {
    let buf = vec![0.5f32; 512];
    let spec = AttentionSpec::bhsd(1, 2, 1, 8, 20, 4, 4);
    let att = Attention::new(&spec, &MaskSpec::NONE, &buf, &buf, &buf).unwrap();
    let f = F::new(Portable);
    let need = F::packed_kv_len(20, 4, 4);
    assert_eq!(
        need,
        32 * (4 + 16),
        "two key tiles of 16: Kᵀ 4 rows, V padded to 16"
    );
    let mut panels = vec![0.0; need];
    let mut scratch = vec![0.0; F::packed_scratch_len(4, 4)];
    let mut st = Default::default();
    assert!(matches!(
        f.pack_kv(&att, 0, 0, 0..2, &mut panels[..need - 1]),
        Err(Error::TooShort {
            tensor: Tensor::PackedKv,
            ..
        })
    ));
    assert_eq!(
        f.pack_kv(&att, 0, 1, 0..2, &mut panels).unwrap_err(),
        Error::TileOutOfRange
    );
    assert_eq!(
        f.pack_kv(&att, 0, 0, 1..3, &mut panels).unwrap_err(),
        Error::TileOutOfRange
    );
    f.pack_kv(&att, 0, 0, 0..2, &mut panels).unwrap();
    assert!(f
        .tile_packed(&att, 0, 1, 0, 16..20, &panels, &mut scratch, &mut st)
        .is_ok());
    for kv in [4..20, 0..8] {
        assert_eq!(
            f.tile_packed(&att, 0, 0, 0, kv, &panels, &mut scratch, &mut st)
                .unwrap_err(),
            Error::TileOutOfRange
        );
    }
    assert!(matches!(
        f.tile_packed(
            &att,
            0,
            0,
            0,
            0..20,
            &panels[..need - 1],
            &mut scratch,
            &mut st
        ),
        Err(Error::TooShort {
            tensor: Tensor::PackedKv,
            ..
        })
    ));
    let short = F::packed_scratch_len(4, 4) - 1;
    assert!(matches!(
        f.tile_packed(
            &att,
            0,
            0,
            0,
            0..20,
            &panels,
            &mut scratch[..short],
            &mut st
        ),
        Err(Error::TooShort {
            tensor: Tensor::Scratch,
            ..
        })
    ));
}

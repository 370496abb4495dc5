//! The block summaries' formats round in the direction their bound needs:
//! `round_down(x) <= x <= round_up(x)`, one step apart at most, with
//! `None` where a value falls outside the format (the selector then asks
//! for a wider one).

use proptest::prelude::*;
use tessera_core::blocksel::BoundFormat;
use tessera_core::{f16, E4M3, E5M2};

fn check_directed<S: BoundFormat>(x: f32) -> Result<(), TestCaseError> {
    if let Some(d) = S::round_down(x) {
        prop_assert!(d.value() <= x, "down({x}) = {}", d.value());
        // Tight: the rounded-to-nearest value is within one step.
        if let Some(u) = S::round_up(x) {
            prop_assert!(u.value() >= x);
            prop_assert!(
                d.value() == u.value()
                    || S::round_up(d.value()).map(|z| z.value()) == Some(d.value())
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn directed_rounding_brackets(x in -70000.0f32..70000.0, tiny in -1e-3f32..1e-3) {
        for v in [x, tiny, x * 1e-4] {
            check_directed::<f16>(v)?;
            check_directed::<E4M3>(v)?;
            check_directed::<E5M2>(v)?;
        }
    }
}

#[test]
fn directed_rounding_edges() {
    assert!(E4M3::round_up(449.0).is_none() && E4M3::round_down(-449.0).is_none());
    assert_eq!(E4M3::round_up(448.0).unwrap().value(), 448.0);
    assert!(f16::round_up(65505.0).is_none());
    assert!(E4M3::round_down(1e-9).unwrap().value() == 0.0);
    assert!(E4M3::round_up(1e-9).unwrap().value() > 0.0);
    assert!(E4M3::round_down(-1e-9).unwrap().value() < 0.0);
    assert_eq!(<f32 as BoundFormat>::round_up(f32::NAN), None);
}

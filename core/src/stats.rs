//! Tile counters. They are counted only with the `stats` feature; without it
//! every field stays 0 and the counting compiles away.

/// How many (q-tile, kv-tile) pairs the kernel visited or skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tiles computed with no per-element mask test.
    pub tiles_full: u64,
    /// Tiles computed with a per-element mask test.
    pub tiles_partial: u64,
    /// Tiles never loaded: Empty tiles, and tiles outside the loop bounds.
    pub tiles_skipped: u64,
}

impl Stats {
    /// Tiles whose keys were loaded.
    pub const fn visited(&self) -> u64 {
        self.tiles_full + self.tiles_partial
    }

    /// Add another set of counters.
    pub fn add(&mut self, other: &Stats) {
        self.tiles_full += other.tiles_full;
        self.tiles_partial += other.tiles_partial;
        self.tiles_skipped += other.tiles_skipped;
    }

    #[inline(always)]
    pub(crate) fn count(&mut self, full: bool) {
        #[cfg(feature = "stats")]
        {
            if full {
                self.tiles_full += 1;
            } else {
                self.tiles_partial += 1;
            }
        }
        #[cfg(not(feature = "stats"))]
        let _ = full;
    }

    #[inline(always)]
    pub(crate) fn skip(&mut self, n: usize) {
        #[cfg(feature = "stats")]
        {
            self.tiles_skipped += n as u64;
        }
        #[cfg(not(feature = "stats"))]
        let _ = n;
    }
}

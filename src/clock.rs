//! Time as a number: a [`Moment`] is nanoseconds of `CLOCK_MONOTONIC`.
//!
//! The core keeps every deadline as one. Unlike `std::time::Instant` it is
//! plain data: it can be written down, compared with a number read back
//! from another process, and a test makes one from any value. The clock is
//! the same on both sides of an `execve`, so a moment an old binary wrote
//! is a moment of the new one. Its arithmetic saturates instead of
//! panicking: a deadline past the end of time is simply never reached.
//!
//! Written down (serde), a moment is its number. In the in-place upgrade's
//! state it is written relative to the moment the state was taken (signed
//! nanoseconds, as state format 1 has it since release 0.1.0): the hand-over
//! encodes and decodes inside [`relative_to`], which sets that origin.

use std::cell::Cell;
use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The farthest a moment written relative to an origin may lie from it,
/// either way: no deadline is further, and nothing read can overflow.
pub const MAX_OFFSET: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

thread_local! {
    static ORIGIN: Cell<Option<Moment>> = const { Cell::new(None) };
}

/// Runs `f` (an encode or a decode) with every moment written, or read, as
/// signed nanoseconds from `origin`.
pub fn relative_to<T>(origin: Moment, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Moment>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ORIGIN.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(ORIGIN.with(|o| o.replace(Some(origin))));
    f()
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Moment(u64);

impl Moment {
    pub const fn from_nanos(nanos: u64) -> Moment {
        Moment(nanos)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The clock now: the shell's to read, never the core's.
    pub fn now() -> Moment {
        // CLOCK_MONOTONIC cannot fail on Linux with a valid clock id; a
        // zero moment would only make every deadline look due.
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Moment(nanos(Duration::from(t))))
            .unwrap_or_default()
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn saturating_duration_since(self, earlier: Moment) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Signed nanoseconds from `origin` to this moment.
    pub fn offset_from(self, origin: Moment) -> i64 {
        let signed = i128::from(self.0) - i128::from(origin.0);
        signed.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The moment `offset` nanoseconds from this one, if the clock has it.
    pub fn offset_by(self, offset: i64) -> Option<Moment> {
        if offset >= 0 {
            self.0.checked_add(offset.unsigned_abs()).map(Moment)
        } else {
            self.0.checked_sub(offset.unsigned_abs()).map(Moment)
        }
    }
}

/// Milliseconds since the epoch, now: the wall clock, for what a person
/// reads (when the last upgrade was), never for a deadline.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn nanos(span: Duration) -> u64 {
    u64::try_from(span.as_nanos()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Moment {
    type Output = Moment;

    fn add(self, span: Duration) -> Moment {
        Moment(self.0.saturating_add(nanos(span)))
    }
}

impl AddAssign<Duration> for Moment {
    fn add_assign(&mut self, span: Duration) {
        *self = *self + span;
    }
}

impl Sub<Duration> for Moment {
    type Output = Moment;

    fn sub(self, span: Duration) -> Moment {
        Moment(self.0.saturating_sub(nanos(span)))
    }
}

impl Sub<Moment> for Moment {
    type Output = Duration;

    fn sub(self, earlier: Moment) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl Serialize for Moment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match ORIGIN.with(Cell::get) {
            Some(origin) => {
                let bound = i64::try_from(MAX_OFFSET.as_nanos()).unwrap_or(i64::MAX);
                serializer.serialize_i64(self.offset_from(origin).clamp(-bound, bound))
            }
            None => serializer.serialize_u64(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Moment {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Moment, D::Error> {
        use serde::de::Error;
        let Some(origin) = ORIGIN.with(Cell::get) else {
            return u64::deserialize(deserializer).map(Moment);
        };
        let offset = i64::deserialize(deserializer)?;
        if Duration::from_nanos(offset.unsigned_abs()) > MAX_OFFSET {
            return Err(D::Error::custom(format!(
                "a time point {offset} ns from the snapshot is out of range"
            )));
        }
        origin.offset_by(offset).ok_or_else(|| {
            D::Error::custom(format!(
                "a time point {offset} ns from the snapshot is not a time this clock has"
            ))
        })
    }
}

impl fmt::Debug for Moment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}s", self.0 / 1_000_000_000, self.0 % 1_000_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_at_both_ends_of_the_clock() {
        let start = Moment::from_nanos(5);
        assert_eq!(start - Duration::from_nanos(9), Moment::from_nanos(0));
        assert_eq!(
            Moment::from_nanos(u64::MAX - 1) + Duration::MAX,
            Moment::from_nanos(u64::MAX)
        );
        assert_eq!(start.saturating_duration_since(Moment::from_nanos(7)), Duration::ZERO);
        assert_eq!(start - Duration::from_nanos(2), Moment::from_nanos(3));
        assert_eq!(format!("{:?}", Moment::from_nanos(1_000_000_005)), "1.000000005s");
    }

    #[test]
    fn an_offset_goes_there_and_back() {
        let origin = Moment::from_nanos(1_000);
        for moment in [Moment::from_nanos(0), origin, Moment::from_nanos(u64::MAX / 2)] {
            assert_eq!(origin.offset_by(moment.offset_from(origin)), Some(moment));
        }
        assert_eq!(origin.offset_by(-1_001), None);
    }

    #[test]
    fn written_down_a_moment_is_its_number_or_its_offset_from_the_origin() {
        let moment = Moment::from_nanos(7_000);
        assert_eq!(serde_json::to_string(&moment).unwrap(), "7000");
        let origin = Moment::from_nanos(10_000);
        let text = relative_to(origin, || serde_json::to_string(&moment).unwrap());
        assert_eq!(text, "-3000");
        let read: Moment = relative_to(Moment::from_nanos(20_000), || serde_json::from_str(&text).unwrap());
        assert_eq!(read, Moment::from_nanos(17_000));
        let far = relative_to(origin, || serde_json::from_str::<Moment>(&i64::MAX.to_string()));
        assert!(far.unwrap_err().to_string().contains("out of range"));
        let before = relative_to(origin, || serde_json::from_str::<Moment>("-10001"));
        assert!(before.unwrap_err().to_string().contains("not a time this clock has"));
        assert_eq!(
            serde_json::from_str::<Moment>("5").unwrap(),
            Moment::from_nanos(5),
            "origin restored"
        );
        // Ten years either way is the bound, itself included: nine read
        // back, eleven do not.
        let bound = MAX_OFFSET.as_nanos() as i64;
        let far_origin = Moment::from_nanos(2 * bound as u64);
        for (offset, ok) in [(bound, true), (-bound, true), (bound + 1, false), (-bound - 1, false)] {
            let read = relative_to(far_origin, || serde_json::from_str::<Moment>(&offset.to_string()));
            assert_eq!(read.is_ok(), ok, "{offset} ns");
        }
        let year: i64 = 366 * 24 * 3600 * 1_000_000_000;
        for (years, ok) in [(9, true), (-9, true), (11, false)] {
            let read = relative_to(far_origin, || {
                serde_json::from_str::<Moment>(&(years * year).to_string())
            });
            assert_eq!(read.is_ok(), ok, "{years} years");
        }
    }

    #[test]
    fn the_clock_reads_forward() {
        let before = Moment::now();
        std::thread::sleep(Duration::from_millis(1));
        let after = Moment::now();
        assert!(before.as_nanos() > 0);
        assert_eq!(Moment::from_nanos(42).as_nanos(), 42);
        // The wall clock: after 2026-01-01, whatever the machine.
        assert!(unix_ms() > 1_767_225_600_000);
        assert!(after.saturating_duration_since(before) >= Duration::from_millis(1));
    }
}

//! How kiln's log lines are written, at a cost a per-request line
//! (`log.access`) can bear: access lines on a worker thread gather in that
//! thread's buffer and are written in one go when the worker runs out of
//! ready work ([`flush_thread`], called before its runtime parks), when the
//! buffer fills, and when the thread ends, instead of one `write` to stderr
//! per request on the thread that serves. Every other line is written at
//! once, so a warning or an error is never held back. Timestamps are the
//! format tracing-subscriber's `SystemTime` writes, with the part down to
//! the second made once a second per thread.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use super::ACCESS_TARGET;

/// A batch is written once it holds this much.
const BATCH_LIMIT: usize = 32 * 1024;

thread_local! {
    /// This thread's access lines not written yet; `None` on threads that
    /// write each line at once (all but kiln's workers).
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

struct Batch(Vec<u8>);

impl Batch {
    fn write_out(&mut self) {
        if !self.0.is_empty() {
            // Nowhere to report a failed write to stderr.
            let _ = io::stderr().lock().write_all(&self.0);
            self.0.clear();
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.write_out();
    }
}

/// Makes this thread gather its access lines, for a thread whose runtime
/// calls [`flush_thread`] before it parks (a kiln worker).
pub(crate) fn batch_this_thread() {
    BATCH.with_borrow_mut(|batch| {
        batch.get_or_insert_with(|| Batch(Vec::with_capacity(BATCH_LIMIT)));
    });
}

/// Writes this thread's gathered access lines, if any.
pub(crate) fn flush_thread() {
    let _ = BATCH.try_with(|batch| {
        if let Ok(mut batch) = batch.try_borrow_mut()
            && let Some(batch) = batch.as_mut()
        {
            batch.write_out();
        }
    });
}

/// Adds `line` to this thread's batch; `false` when this thread has none.
fn gather(line: &[u8]) -> bool {
    BATCH
        .try_with(|batch| {
            let Ok(mut batch) = batch.try_borrow_mut() else {
                return false;
            };
            let Some(batch) = batch.as_mut() else {
                return false;
            };
            batch.0.extend_from_slice(line);
            if batch.0.len() >= BATCH_LIMIT {
                batch.write_out();
            }
            true
        })
        .unwrap_or(false)
}

/// stderr, with access lines gathered on threads that batch them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Stderr;

/// One log line's writer (the formatter writes each line whole).
#[derive(Debug)]
pub(super) enum Line {
    Direct,
    Gathered,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line::Direct
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        if meta.target() == ACCESS_TARGET {
            Line::Gathered
        } else {
            Line::Direct
        }
    }
}

impl io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if matches!(self, Self::Gathered) && gather(buf) {
            return Ok(());
        }
        io::stderr().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// The second last formatted on this thread, and its text up to the
    /// fraction (`2026-12-01T07:29:24.`).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// UTC timestamps with microseconds, as tracing-subscriber's `SystemTime`
/// writes them (`2026-12-01T07:29:24.123456Z`), at a tenth of its cost.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Timestamps;

impl FormatTime for Timestamps {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let Ok(since) = SystemTime::now().duration_since(UNIX_EPOCH) else {
            return tracing_subscriber::fmt::time::SystemTime.format_time(w);
        };
        let second = since.as_secs();
        SECOND.with_borrow_mut(|(at, text)| {
            if *at != second {
                text.clear();
                write_second(text, second)?;
                *at = second;
            }
            w.write_str(text)
        })?;
        let micros = since.subsec_micros();
        let mut digits = [b'0'; 7];
        let mut n = micros;
        for digit in digits[..6].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
        digits[6] = b'Z';
        // Digits and `Z` are ASCII.
        w.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` of `second` since the Unix epoch (UTC).
fn write_second(text: &mut String, second: u64) -> fmt::Result {
    let days = (second / 86_400) as i64;
    let of_day = second % 86_400;
    let (year, month, day) = civil_from_days(days);
    write!(
        text,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_tracing_subscribers_own() {
        let mut ours = String::new();
        let mut theirs = String::new();
        // The same second on both sides: retry across a second boundary.
        for _ in 0..3 {
            ours.clear();
            theirs.clear();
            Timestamps.format_time(&mut Writer::new(&mut ours)).unwrap();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            if ours[..20] == theirs[..20] {
                break;
            }
        }
        assert_eq!(ours.len(), theirs.len(), "{ours} {theirs}");
        assert_eq!(ours[..20], theirs[..20], "{ours} {theirs}");
        assert!(ours.ends_with('Z'), "{ours}");
    }

    #[test]
    fn civil_dates_around_leap_days_and_eras() {
        let day = |y: i64, m: u32, d: u32| (y, m, d);
        assert_eq!(civil_from_days(0), day(1970, 1, 1));
        assert_eq!(civil_from_days(11_016), day(2000, 2, 29));
        assert_eq!(civil_from_days(11_017), day(2000, 3, 1));
        assert_eq!(civil_from_days(20_788), day(2026, 12, 1));
        assert_eq!(civil_from_days(-1), day(1969, 12, 31));
        let mut text = String::new();
        write_second(&mut text, 20_788 * 86_400 + 7 * 3600 + 29 * 60 + 24).unwrap();
        assert_eq!(text, "2026-12-01T07:29:24.");
    }

    #[test]
    fn access_lines_wait_for_the_flush_on_a_batching_thread_only() {
        std::thread::spawn(|| {
            assert!(
                !gather(b"not batched\n"),
                "a thread batches only when asked"
            );
            batch_this_thread();
            assert!(gather(b"batched\n"));
            assert!(gather(b"again\n"));
            let held = BATCH.with_borrow_mut(|b| std::mem::take(&mut b.as_mut().unwrap().0));
            assert_eq!(held, b"batched\nagain\n");
        })
        .join()
        .unwrap();
    }
}

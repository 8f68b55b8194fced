//! A Dapr **input binding** that fires on a schedule: a cron expression, a
//! descriptor such as `@hourly`, or a fixed period (`@every 30s`). Served as a
//! pluggable component by the `plugd-cron` binary, on
//! `<sockets folder>/cron.sock`, so Components use `type: bindings.cron` (see
//! `component.yaml` and `README.md` beside this crate). Each Component (each
//! `x-component-instance`) gets its own [`CronBinding`] and schedule.
//!
//! # Metadata
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `schedule` | cron expression (5 fields, or 6 with seconds first), `@yearly`/`@annually`/`@monthly`/`@weekly`/`@daily`/`@midnight`/`@hourly`, or `@every <Go duration>` (at least `1ms`) | required |
//! | `timeZone` | zone cron expressions are evaluated in: `UTC`, `Local`, or an IANA name from the system's tz database | `UTC` |
//!
//! A bad value fails Init with `INVALID_ARGUMENT` naming the value and why.
//!
//! # Events
//!
//! Data: the fire time (the scheduled time, not the time of sending) as a
//! JSON string, RFC 3339 in UTC with milliseconds:
//! `"2026-11-24T10:00:00.000Z"`; content type `application/json`. Metadata:
//! `fireTime` (the same time, unquoted), `schedule` and `timeZone` as
//! configured.
//!
//! # Skipping
//!
//! - Fires happen only while the host has a `Read` stream open for the
//!   instance. Ticks while none is open are dropped and never replayed (as
//!   with Dapr's own cron binding); an `@every` period starts anew with each
//!   stream (first fire one period after it opens).
//! - At most [`MAX_IN_FLIGHT`](binding::MAX_IN_FLIGHT) (one) event per stream
//!   waits for the app's answer. A fire while one is unanswered is skipped
//!   (logged at debug with a running count); fires are not queued.
//! - `@every` ticks stay on their grid (no drift): a late tick is reported
//!   with its scheduled time, and ticks missed entirely are skipped. A cron
//!   expression's next fire is looked up after the time of firing, so
//!   occurrences that passed meanwhile are skipped too.
//! - The host's error replies (the app failed, or `input binding is closed`)
//!   are logged; they do not end the stream.

pub mod binding;
pub mod schedule;

pub use binding::CronBinding;
pub use schedule::{CronConfig, Schedule};

//! Component metadata of the cron binding (`spec.metadata` of the Component
//! YAML), validated, and the [`Ticker`] that turns a schedule into fire times.

use std::collections::HashMap;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::time::{Instant, Interval, MissedTickBehavior};

#[doc(no_inline)]
pub use plugd_component_sdk::metadata::{ConfigError, parse_go_duration, property};

/// Shortest accepted `@every` period: shorter ones would only burn CPU on
/// skipped fires, and fire times are reported to the millisecond.
pub const MIN_EVERY: Duration = Duration::from_millis(1);

/// The time zone used when `timeZone` is not given.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// Metadata keys (matched without regard to case, as Dapr does).
pub mod keys {
    /// The schedule: a cron expression, a descriptor such as `@hourly`, or
    /// `@every <duration>`. Required.
    pub const SCHEDULE: &str = "schedule";
    /// The IANA time zone cron expressions are evaluated in. Default `UTC`.
    pub const TIME_ZONE: &str = "timeZone";

    /// Every key the binding reads (`direction` and `route`, which the host
    /// reads, are runtime-level keys and never warned about).
    pub const ALL: [&str; 2] = [SCHEDULE, TIME_ZONE];
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// `@every <duration>`: a fixed period, counted from the start of each
    /// `Read` stream.
    Every(Duration),
    /// A cron expression (descriptors are turned into one).
    Cron(Box<Cron>),
}

impl Schedule {
    /// Parses a schedule; the error says what is wrong with it (without
    /// repeating the text, which the caller names).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(rest) = strip_prefix_ignore_case(text, "@every") {
            if !rest.starts_with(char::is_whitespace) {
                return Err("expected \"@every <duration>\", such as \"@every 1m30s\"".to_owned());
            }
            let period = parse_go_duration(rest.trim())?;
            if period.is_zero() {
                return Err("the period must be positive".to_owned());
            }
            if period < MIN_EVERY {
                return Err(format!(
                    "the period must be at least {}",
                    humantime::format_duration(MIN_EVERY)
                ));
            }
            return Ok(Self::Every(period));
        }
        let expression = if text.starts_with('@') {
            descriptor(text)?
        } else {
            text
        };
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "a cron expression has 5 fields (minute hour day-of-month month day-of-week) \
                 or 6 (seconds first), not {fields}"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        match parser.parse(expression) {
            Ok(cron) => Ok(Self::Cron(Box::new(cron))),
            Err(err) => Err(match faulty_field(&parser, expression) {
                Some(field) => format!("{field}: {err}"),
                None => err.to_string(),
            }),
        }
    }
}

/// Names the first field of a cron expression that fails to parse on its own
/// (the others replaced by `*`), with the values it allows.
fn faulty_field(parser: &CronParser, expression: &str) -> Option<String> {
    const FIELDS: [(&str, &str); 6] = [
        ("second", "0-59"),
        ("minute", "0-59"),
        ("hour", "0-23"),
        ("day-of-month", "1-31, L, W"),
        ("month", "1-12 or JAN-DEC"),
        ("day-of-week", "0-7 or SUN-SAT, L, #"),
    ];
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let names = &FIELDS[FIELDS.len() - fields.len()..];
    (0..fields.len()).find_map(|faulty| {
        let alone: Vec<&str> = (0..fields.len())
            .map(|i| if i == faulty { fields[i] } else { "*" })
            .collect();
        parser.parse(&alone.join(" ")).is_err().then(|| {
            let (name, allowed) = names[faulty];
            format!(
                "the {name} field {:?} is invalid (allowed: {allowed})",
                fields[faulty]
            )
        })
    })
}

/// The cron expression a descriptor stands for.
fn descriptor(text: &str) -> Result<&'static str, String> {
    let expression = match text.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            return Err(
                "unknown descriptor; use @yearly, @annually, @monthly, @weekly, \
                        @daily, @midnight, @hourly or @every <duration>"
                    .to_owned(),
            );
        }
    };
    Ok(expression)
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Validated settings of one binding instance.
#[derive(Debug, Clone)]
pub struct CronConfig {
    /// The parsed schedule.
    pub schedule: Schedule,
    /// The schedule as given (trimmed), reported in each event's metadata.
    pub schedule_text: String,
    /// The zone cron expressions are evaluated in.
    pub time_zone: TimeZone,
    /// The zone's name as given (or [`DEFAULT_TIME_ZONE`]), reported in each
    /// event's metadata.
    pub time_zone_name: String,
}

/// Looks a time zone up: `UTC`, `Local` (the system's zone) or an IANA name
/// from the system's time zone database.
fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("UTC") {
        return Ok(TimeZone::UTC);
    }
    if name.eq_ignore_ascii_case("Local") {
        return TimeZone::try_system()
            .map_err(|err| format!("the system time zone is unknown: {err}"));
    }
    TimeZone::get(name).map_err(|err| err.to_string())
}

impl CronConfig {
    /// Reads the Init properties. Unknown keys are ignored here; the binding
    /// logs them at Init (one warning; never `route` or `direction`).
    pub fn from_properties(properties: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let time_zone_name = property(properties, keys::TIME_ZONE).unwrap_or(DEFAULT_TIME_ZONE);
        let time_zone = match time_zone(time_zone_name) {
            Ok(zone) => Some(zone),
            Err(why) => {
                problems.push(format!(
                    "{} {time_zone_name:?} is not a known time zone: {why}",
                    keys::TIME_ZONE
                ));
                None
            }
        };
        let schedule = match property(properties, keys::SCHEDULE) {
            None => {
                problems.push(format!(
                    "{} is required: a cron expression such as \"*/5 * * * *\", \
                     a descriptor such as \"@hourly\", or \"@every <duration>\"",
                    keys::SCHEDULE
                ));
                None
            }
            Some(text) => match Schedule::parse(text) {
                Ok(schedule) => Some((schedule, text)),
                Err(why) => {
                    problems.push(format!("{} {text:?} is not valid: {why}", keys::SCHEDULE));
                    None
                }
            },
        };
        let (Some((schedule, text)), Some(time_zone)) = (schedule, time_zone) else {
            return Err(ConfigError(problems));
        };
        if let Schedule::Cron(cron) = &schedule
            && let Err(err) = next_occurrence(cron, &time_zone, Timestamp::now())
        {
            return Err(ConfigError(vec![format!(
                "{} {text:?} never fires: {err}",
                keys::SCHEDULE
            )]));
        }
        Ok(Self {
            schedule,
            schedule_text: text.to_owned(),
            time_zone,
            time_zone_name: time_zone_name.to_owned(),
        })
    }
}

/// The first time after `after` (strictly) that `cron` matches in `zone`.
pub fn next_occurrence(
    cron: &Cron,
    zone: &TimeZone,
    after: Timestamp,
) -> Result<Timestamp, croner::errors::CronError> {
    cron.find_next_occurrence(&after.to_zoned(zone.clone()), false)
        .map(|next| next.timestamp())
}

/// A fire time as the events carry it: RFC 3339 in UTC with milliseconds,
/// such as `2026-11-24T10:00:00.000Z`.
pub fn format_fire_time(time: Timestamp) -> String {
    format!("{time:.3}")
}

/// Turns a schedule into fire times, from the moment it is made. Waiting is
/// cancel-safe: a dropped [`Ticker::tick`] loses no fire time.
#[derive(Debug)]
pub struct Ticker {
    kind: TickerKind,
}

#[derive(Debug)]
enum TickerKind {
    Every {
        interval: Interval,
        /// A monotonic instant and the wall-clock time at that instant: fire
        /// times are the wall-clock time of each scheduled instant, so they
        /// do not drift.
        origin: Instant,
        origin_time: Timestamp,
    },
    Cron {
        cron: Box<Cron>,
        zone: TimeZone,
        /// The fire time being waited for.
        next: Option<Timestamp>,
    },
    /// A cron expression with no next occurrence: never fires.
    Idle,
}

impl Ticker {
    /// A ticker for `config`: an `@every` period's first fire is one period
    /// from now; a cron expression's is its next occurrence after now.
    pub fn new(config: &CronConfig) -> Self {
        let kind = match &config.schedule {
            Schedule::Every(period) => {
                let origin = Instant::now();
                let origin_time = Timestamp::now();
                let mut interval = tokio::time::interval_at(origin + *period, *period);
                // Late ticks are skipped, not bunched up, and the ones after
                // stay on the original grid.
                interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
                TickerKind::Every {
                    interval,
                    origin,
                    origin_time,
                }
            }
            Schedule::Cron(cron) => TickerKind::Cron {
                cron: cron.clone(),
                zone: config.time_zone.clone(),
                next: None,
            },
        };
        Self { kind }
    }

    /// Waits for the next fire time and returns it (the scheduled time, not
    /// the time of waking). Fire times that passed while nobody called this
    /// are skipped.
    pub async fn tick(&mut self) -> Timestamp {
        match &mut self.kind {
            TickerKind::Every {
                interval,
                origin,
                origin_time,
            } => {
                let at = interval.tick().await;
                let offset = at.saturating_duration_since(*origin);
                origin_time
                    .checked_add(offset)
                    .unwrap_or_else(|_| Timestamp::now())
            }
            TickerKind::Cron { cron, zone, next } => loop {
                let now = Timestamp::now();
                let target = match *next {
                    Some(target) => target,
                    None => match next_occurrence(cron, zone, now) {
                        Ok(target) => *next.insert(target),
                        Err(err) => {
                            tracing::warn!(error = %err, "the schedule has no next fire time");
                            self.kind = TickerKind::Idle;
                            return std::future::pending().await;
                        }
                    },
                };
                match Duration::try_from(target.duration_since(now)) {
                    // Still ahead. The wall clock may move while we sleep,
                    // so the target is checked again on waking.
                    Ok(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                    // Due (or overdue): the next one is looked up after the
                    // time of firing, so missed occurrences are skipped.
                    _ => {
                        *next = None;
                        return target;
                    }
                }
            },
            TickerKind::Idle => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn cron(text: &str) -> Box<Cron> {
        match Schedule::parse(text) {
            Ok(Schedule::Cron(cron)) => cron,
            other => panic!("{text:?} is not a cron expression: {other:?}"),
        }
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    #[test]
    fn every_schedules() {
        let ok = [
            ("@every 100ms", Duration::from_millis(100)),
            ("@every 1s", Duration::from_secs(1)),
            ("  @EVERY   1m30s ", Duration::from_secs(90)),
            ("@every 1h", Duration::from_secs(3600)),
            ("@every 1.5s", Duration::from_millis(1500)),
            ("@every 1ms", Duration::from_millis(1)),
        ];
        for (text, period) in ok {
            match Schedule::parse(text) {
                Ok(Schedule::Every(got)) => assert_eq!(got, period, "{text}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let bad = [
            ("@every 0s", "positive"),
            ("@every 0", "positive"),
            ("@every -1s", "negative"),
            ("@every 500us", "at least 1ms"),
            ("@every nonsense", "not a duration"),
            ("@every", "@every <duration>"),
            ("@every5s", "@every <duration>"),
            ("@every 5", "not a duration"),
        ];
        for (text, why) in bad {
            let err = Schedule::parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn cron_expressions_and_descriptors() {
        let after = ts("2026-11-24T10:17:42.5Z");
        let cases = [
            ("* * * * * *", "2026-11-24T10:17:43Z"),
            ("*/5 * * * *", "2026-11-24T10:20:00Z"),
            ("30 */2 * * * *", "2026-11-24T10:18:30Z"),
            ("0 9 * * MON-FRI", "2026-11-25T09:00:00Z"),
            // Day of month and day of week both restricted: either matches.
            ("0 0 13 * 5", "2026-11-27T00:00:00Z"),
            ("0 0 * * 7", "2026-11-29T00:00:00Z"),
            ("@hourly", "2026-11-24T11:00:00Z"),
            ("@daily", "2026-11-25T00:00:00Z"),
            ("@midnight", "2026-11-25T00:00:00Z"),
            ("@weekly", "2026-11-29T00:00:00Z"),
            ("@monthly", "2026-12-01T00:00:00Z"),
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@Annually", "2027-01-01T00:00:00Z"),
        ];
        for (text, expected) in cases {
            let next = next_occurrence(&cron(text), &TimeZone::UTC, after).expect(text);
            assert_eq!(next, ts(expected), "{text}");
        }
    }

    #[test]
    fn bad_cron_expressions() {
        let bad = [
            (
                "61 * * * *",
                "the minute field \"61\" is invalid (allowed: 0-59)",
            ),
            ("0 0 25 * * *", "the hour field \"25\""),
            ("* * * 13 *", "the month field \"13\""),
            ("* * * *", "not 4"),
            ("* * * * * * *", "not 7"),
            ("* * 32 * *", "out of bounds"),
            ("x * * * *", "illegal"),
            ("@reboot", "unknown descriptor"),
        ];
        for (text, why) in bad {
            let err = Schedule::parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn time_zones() {
        let zone = TimeZone::get("Europe/Berlin").expect("the system has a tz database");
        let after = ts("2026-11-24T10:00:00Z");
        // 09:00 in Berlin is 08:00 UTC in winter.
        let next = next_occurrence(&cron("0 9 * * *"), &zone, after).expect("next");
        assert_eq!(next, ts("2026-11-25T08:00:00Z"));

        let config = CronConfig::from_properties(&props(&[
            ("Schedule", "0 9 * * *"),
            ("TIMEZONE", " Europe/Berlin "),
        ]))
        .expect("valid");
        assert_eq!(config.time_zone_name, "Europe/Berlin");
        let config =
            CronConfig::from_properties(&props(&[("schedule", "@every 1s")])).expect("valid");
        assert_eq!(config.time_zone_name, "UTC");
        assert_eq!(config.schedule_text, "@every 1s");
    }

    #[test]
    fn metadata_problems_are_reported_together() {
        let err = CronConfig::from_properties(&props(&[("timeZone", "Mars/Olympus")]))
            .expect_err("invalid");
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.to_string().contains("schedule is required"), "{err}");
        assert!(err.to_string().contains("\"Mars/Olympus\""), "{err}");

        let err = CronConfig::from_properties(&props(&[("schedule", "0 0 30 2 *")]))
            .expect_err("never fires");
        assert!(err.to_string().contains("never fires"), "{err}");
    }

    #[test]
    fn fire_times_have_milliseconds() {
        assert_eq!(
            format_fire_time(ts("2026-11-24T10:00:00Z")),
            "2026-11-24T10:00:00.000Z"
        );
        assert_eq!(
            format_fire_time(ts("2026-11-24T10:00:00.123456789+01:00")),
            "2026-11-24T09:00:00.123Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_ticks_stay_on_their_grid() {
        let config =
            CronConfig::from_properties(&props(&[("schedule", "@every 100ms")])).expect("valid");
        let mut ticker = Ticker::new(&config);
        let first = ticker.tick().await;
        let second = ticker.tick().await;
        assert_eq!(
            second.duration_since(first),
            jiff::SignedDuration::from_millis(100)
        );
        // A late caller gets the overdue tick once, then the ones it missed
        // are skipped and the next stays on the grid.
        tokio::time::advance(Duration::from_millis(350)).await;
        let overdue = ticker.tick().await;
        let next = ticker.tick().await;
        assert_eq!(
            overdue.duration_since(second),
            jiff::SignedDuration::from_millis(100)
        );
        assert_eq!(
            next.duration_since(second),
            jiff::SignedDuration::from_millis(400)
        );
    }
}

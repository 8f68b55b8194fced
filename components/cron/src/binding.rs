//! The input binding: fires events on the instance's schedule while a `Read`
//! stream is open.

use std::sync::Arc;

use plugd_component_sdk::bindings::{
    BindingError, Event, EventError, EventSink, InputBinding, Metadata, Properties,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::schedule::{CronConfig, Ticker, format_fire_time, keys};

/// Events of one stream the app may have unanswered at once. A fire while
/// this many are unanswered is skipped.
pub const MAX_IN_FLIGHT: usize = 1;

/// Content type of every event: the data is a JSON string.
pub const CONTENT_TYPE: &str = "application/json";

/// Event metadata key holding the fire time (the same text as the data,
/// without the JSON quotes).
pub const FIRE_TIME: &str = "fireTime";

/// One cron binding instance (one Component). Init sets (or, on a re-Init,
/// replaces) its schedule; an open `Read` stream picks a new schedule up at
/// once.
#[derive(Debug)]
pub struct CronBinding {
    instance: String,
    config: watch::Sender<Option<Arc<CronConfig>>>,
}

impl CronBinding {
    /// An instance without a schedule yet (Init gives it one). Fits
    /// `ComponentServer::input_binding` as the factory.
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            config: watch::Sender::new(None),
        }
    }
}

impl InputBinding for CronBinding {
    async fn init(&self, properties: Properties) -> Result<(), BindingError> {
        let config = CronConfig::from_properties(&properties)
            .map_err(|err| BindingError::InvalidArgument(err.to_string()))?;
        plugd_component_sdk::metadata::warn_unknown(
            "bindings.cron",
            &self.instance,
            &properties,
            &keys::ALL,
        );
        tracing::info!(
            instance = %self.instance,
            schedule = %config.schedule_text,
            time_zone = %config.time_zone_name,
            "initialised"
        );
        self.config.send_replace(Some(Arc::new(config)));
        Ok(())
    }

    async fn read(&self, events: EventSink) -> Result<(), BindingError> {
        let mut updates = self.config.subscribe();
        let mut config = updates
            .borrow_and_update()
            .clone()
            .ok_or(BindingError::NotInitialized)?;
        let mut ticker = Ticker::new(&config);
        let mut in_flight: JoinSet<(String, Result<Vec<u8>, EventError>)> = JoinSet::new();
        let mut skipped: u64 = 0;
        tracing::debug!(schedule = %config.schedule_text, "firing while the stream is open");
        loop {
            tokio::select! {
                biased;
                () = events.closed() => break,
                Some(joined) = in_flight.join_next() => match joined {
                    Ok((fire_time, result)) => log_reply(&fire_time, result),
                    Err(err) => tracing::warn!(error = %err, "an event send task failed"),
                },
                Ok(()) = updates.changed() => {
                    let latest = updates.borrow_and_update().clone();
                    if let Some(latest) = latest {
                        tracing::info!(schedule = %latest.schedule_text, "schedule changed");
                        ticker = Ticker::new(&latest);
                        config = latest;
                    }
                }
                fire = ticker.tick() => {
                    let fire_time = format_fire_time(fire);
                    if in_flight.len() >= MAX_IN_FLIGHT {
                        skipped += 1;
                        tracing::debug!(
                            fire_time,
                            skipped,
                            "skipping a fire: the app has not answered the previous event"
                        );
                        continue;
                    }
                    let event = event(&config, &fire_time);
                    let sink = events.clone();
                    in_flight.spawn(async move {
                        let result = sink.send(event).await;
                        (fire_time, result)
                    });
                }
            }
        }
        if skipped > 0 {
            tracing::debug!(skipped, "stream closed; fires skipped on it");
        }
        // The stream is closed, so the sends still waiting resolve at once.
        in_flight.shutdown().await;
        Ok(())
    }
}

/// The event for a fire at `fire_time` (formatted).
fn event(config: &CronConfig, fire_time: &str) -> Event {
    // RFC 3339 text needs no escaping inside a JSON string.
    let data = format!("\"{fire_time}\"").into_bytes();
    let metadata = Metadata::from([
        (keys::TIME_ZONE.to_owned(), config.time_zone_name.clone()),
        (keys::SCHEDULE.to_owned(), config.schedule_text.clone()),
        (FIRE_TIME.to_owned(), fire_time.to_owned()),
    ]);
    Event {
        data,
        metadata,
        content_type: Some(CONTENT_TYPE.to_owned()),
    }
}

fn log_reply(fire_time: &str, result: Result<Vec<u8>, EventError>) {
    match result {
        Ok(reply) => tracing::debug!(fire_time, bytes = reply.len(), "the app handled the event"),
        Err(EventError::Failed(error)) => {
            tracing::warn!(fire_time, %error, "the host did not deliver the event");
        }
        Err(EventError::Closed) => {
            tracing::debug!(fire_time, "the stream closed before the host answered");
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    #[test]
    fn events_carry_the_fire_time() {
        let config = CronConfig::from_properties(&Properties::from([(
            "schedule".to_owned(),
            "@every 1s".to_owned(),
        )]))
        .expect("valid");
        let fire: Timestamp = "2026-11-24T10:00:00Z".parse().expect("timestamp");
        let event = event(&config, &format_fire_time(fire));
        assert_eq!(event.data, b"\"2026-11-24T10:00:00.000Z\"");
        assert_eq!(event.content_type.as_deref(), Some("application/json"));
        assert_eq!(event.metadata["fireTime"], "2026-11-24T10:00:00.000Z");
        assert_eq!(event.metadata["schedule"], "@every 1s");
        assert_eq!(event.metadata["timeZone"], "UTC");
    }
}

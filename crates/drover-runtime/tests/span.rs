//! Each reconcile runs in its own span carrying the controller name, the key and the reason.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_runtime::{Action, Reconciler, ReconcilerConfig};
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

type Fields = HashMap<String, String>;
/// A span's name and fields.
type SpanInfo = (String, Fields);

/// A minimal subscriber that remembers spans and which span each event happened in.
#[derive(Default)]
struct Capture {
    next_id: AtomicU64,
    spans: Mutex<HashMap<u64, SpanInfo>>,
    stack: Mutex<Vec<u64>>,
    /// (message, span name and fields of the event's parent span)
    events: Mutex<Vec<(String, Option<SpanInfo>)>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Shared(Arc<Capture>);

impl Subscriber for Shared {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.0.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        let name = attrs.metadata().name().to_owned();
        self.0.spans.lock().unwrap().insert(id, (name, fields));
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        let parent = match event.parent() {
            Some(id) => Some(id.into_u64()),
            None if event.is_contextual() => self.0.stack.lock().unwrap().last().copied(),
            None => None,
        };
        let parent = parent.and_then(|id| self.0.spans.lock().unwrap().get(&id).cloned());
        let message = fields.remove("message").unwrap_or_default();
        self.0.events.lock().unwrap().push((message, parent));
    }
    fn enter(&self, id: &Id) {
        self.0.stack.lock().unwrap().push(id.into_u64());
    }
    fn exit(&self, id: &Id) {
        let mut stack = self.0.stack.lock().unwrap();
        if let Some(pos) = stack.iter().rposition(|s| *s == id.into_u64()) {
            stack.remove(pos);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("boom")]
struct Boom;

#[tokio::test(start_paused = true)]
async fn reconcile_span_carries_controller_key_and_reason() {
    let capture = Arc::new(Capture::default());
    let _guard = tracing::subscriber::set_default(Shared(Arc::clone(&capture)));

    let calls = Arc::new(AtomicUsize::new(0));
    let reconcile = |key: String, calls: Arc<AtomicUsize>| async move {
        tracing::info!("inside {key}");
        match calls.fetch_add(1, Ordering::SeqCst) {
            0 => Ok(Action::requeue(Duration::from_secs(1))),
            1 => Err(Boom),
            _ => Ok(Action::await_change()),
        }
    };
    let controller = Reconciler::new(
        ReconcilerConfig::new("spans"),
        Arc::clone(&calls),
        reconcile,
    )
    .unwrap();
    controller
        .trigger()
        .trigger("a".to_string(), "manual")
        .unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(controller.run(shutdown.clone()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while calls.load(Ordering::SeqCst) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "three reconciles");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let events = capture.events.lock().unwrap();
    let reasons: Vec<String> = events
        .iter()
        .filter(|(message, _)| message == "inside a")
        .map(|(_, parent)| {
            let (name, fields) = parent.clone().expect("event inside a span");
            assert_eq!(name, "reconcile");
            assert_eq!(fields["controller"], "spans");
            assert_eq!(fields["key"], "a");
            fields["reason"].clone()
        })
        .collect();
    assert_eq!(reasons, ["trigger(manual)", "requeue", "backoff"]);

    let (_, failed_in) = events
        .iter()
        .find(|(message, _)| message == "reconcile failed")
        .expect("failure is logged");
    let (_, fields) = failed_in
        .clone()
        .expect("failure logged in the reconcile span");
    assert_eq!(fields["reason"], "requeue");
}

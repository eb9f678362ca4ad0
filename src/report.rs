//! Telling operators what happened: every event goes to the user's handler (isolated from
//! panics) and to the `log` crate, at the levels the event module documents.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::event::{
    DrainEvent, Event, HandleEvent, HeartbeatFailureEvent, MisconfigurationEvent, PromotionEvent,
    SaturationEvent, SideDownEvent, SideUpEvent, SplitBrainEvent, SwitchEvent, SwitchRefusedEvent,
    SynchronousEvent,
};

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// Runs `f`, turning a panic into an `Err` with its message.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

/// The user's event handlers, called so that a panic in one is logged and survived: a handler
/// must never take the monitor (or a caller) down with it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Events(Arc<[Arc<dyn HandleEvent>]>);

macro_rules! forward {
    ($($method:ident($event:ident) => $variant:ident),* $(,)?) => {
        $(
            pub(crate) fn $method(&self, event: $event) {
                self.emit(Event::$variant(event));
            }
        )*
    };
}

impl Events {
    pub(crate) fn new(handlers: Vec<Arc<dyn HandleEvent>>) -> Events {
        Events(handlers.into())
    }

    /// Whether any handler is installed (per-connection events are built only then).
    pub(crate) fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    pub(crate) fn emit(&self, event: Event) {
        let Some((last, rest)) = self.0.split_last() else {
            return;
        };
        for handler in rest {
            call(handler.as_ref(), event.clone());
        }
        call(last.as_ref(), event);
    }

    forward! {
        handle_side_down(SideDownEvent) => SideDown,
        handle_side_up(SideUpEvent) => SideUp,
        handle_switch(SwitchEvent) => Switch,
        handle_drain(DrainEvent) => Drain,
        handle_heartbeat_failure(HeartbeatFailureEvent) => HeartbeatFailure,
        handle_switch_refused(SwitchRefusedEvent) => SwitchRefused,
        handle_split_brain(SplitBrainEvent) => SplitBrain,
        handle_promotion(PromotionEvent) => Promotion,
        handle_misconfiguration(MisconfigurationEvent) => Misconfiguration,
        handle_saturation(SaturationEvent) => Saturation,
        handle_synchronous(SynchronousEvent) => Synchronous,
    }
}

fn call(handler: &dyn HandleEvent, event: Event) {
    if let Err(msg) = catch(|| handler.handle(event)) {
        log::error!("an event handler panicked: {msg}; the pool carries on");
    }
}

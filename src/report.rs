//! Telling operators what happened: every event goes to the user's handler (isolated from
//! panics) and to the `log` crate, at the levels the event module documents.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::event::{
    DrainEvent, HandleEvent, HeartbeatFailureEvent, MisconfigurationEvent, PromotionEvent,
    SideDownEvent, SideUpEvent, SplitBrainEvent, SwitchEvent, SwitchRefusedEvent,
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

/// The user's event handler, called so that a panic in it is logged and survived: a handler
/// must never take the monitor down with it.
#[derive(Clone, Debug)]
pub(crate) struct Events(Arc<dyn HandleEvent>);

macro_rules! forward {
    ($($method:ident($event:ty)),* $(,)?) => {
        $(
            pub(crate) fn $method(&self, event: $event) {
                if let Err(msg) = catch(|| self.0.$method(event)) {
                    log::error!(
                        concat!("the event handler panicked in ", stringify!($method), ": {}; the pool carries on"),
                        msg
                    );
                }
            }
        )*
    };
}

impl Events {
    pub(crate) fn new(handler: Arc<dyn HandleEvent>) -> Events {
        Events(handler)
    }

    forward! {
        handle_side_down(SideDownEvent),
        handle_side_up(SideUpEvent),
        handle_switch(SwitchEvent),
        handle_drain(DrainEvent),
        handle_heartbeat_failure(HeartbeatFailureEvent),
        handle_switch_refused(SwitchRefusedEvent),
        handle_split_brain(SplitBrainEvent),
        handle_promotion(PromotionEvent),
        handle_misconfiguration(MisconfigurationEvent),
    }
}

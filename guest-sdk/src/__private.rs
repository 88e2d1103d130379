//! Support for [`plugin!`](crate::plugin!); not part of the public API.

pub use crate::bindings;
pub use crate::bindings::exports::reconcile::plugin::plugin::Guest;
pub use crate::bindings::reconcile::plugin::types;

use crate::plugin::{Reconciler, Request};

/// Calls `R::metadata` and converts it to the WIT record.
pub fn metadata<R: Reconciler>() -> types::PluginMetadata {
    R::metadata().into_wit()
}

/// Calls `R::reconcile` and converts its result to the WIT result.
pub fn reconcile<R: Reconciler>(
    request: types::ReconcileRequest,
) -> Result<types::Action, types::ReconcileError> {
    let result = R::reconcile(Request::from_wit(request));
    match result {
        Ok(action) => Ok(action.into_wit()),
        Err(error) => Err(error.into_wit()),
    }
}

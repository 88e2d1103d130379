//! Built against `reconcile:plugin@0.9.0`, which does not exist: loading
//! it must fail with one line naming the versions the host serves.

wit_bindgen::generate!({
    world: "reconciler",
    path: "wit",
});

struct Plugin;

impl exports::reconcile::plugin::plugin::Guest for Plugin {
    fn metadata() -> String {
        String::new()
    }
}

export!(Plugin);

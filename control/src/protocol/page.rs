//! `GET /register/<id>`: what an interactive login's URL shows — the one
//! command an admin runs to admit the waiting node.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::pending::validate_registration_id;
use crate::state::SharedState;

pub(super) async fn register_page(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Response {
    // Only [A-Za-z0-9-] gets through, so the id can go into HTML as it is.
    if validate_registration_id(&id).is_err() {
        return (StatusCode::BAD_REQUEST, "invalid registration id").into_response();
    }
    let waiting = state.pending.contains(&id);
    let status = if waiting {
        "This machine is waiting to join the network."
    } else {
        "No machine is waiting under this id any more: it was admitted, or the request expired. Run <code>tailscale up</code> again for a new link."
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Meshscale: machine registration</title></head>
<body>
<h1>Machine registration</h1>
<p>{status}</p>
<p>An administrator admits it with:</p>
<pre><code>meshscale nodes register --key {id} --user USERNAME</code></pre>
</body>
</html>
"#
    ))
    .into_response()
}

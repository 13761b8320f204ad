//! `/admin/webhooks`: the endpoints in effect (name, URL, event filter, where the settings come
//! from — never a secret), their latest deliveries, "send test event", and the changes of
//! `crate::webhooks::edit`: add an endpoint, edit URL and events, rotate the secret (the new one
//! is shown once, on that response), revert or delete.

use rocket::form::FromForm;
use rocket::http::Status;
use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::{AdminUser, Csrf, CsrfField, CsrfOnly};
use crate::changes::{Change, Committed};
use crate::db::models::webhooks as rows;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time, ExposeSecret, Secret};
use crate::web::{Flash, Layout, Page};
use crate::webhooks::edit::{Editor, ROTATION_OVERLAP};
use crate::webhooks::Origin;

pub fn routes() -> Vec<Route> {
    routes![page, send_test, add, update, rotate, remove]
}

/// Deliveries shown per endpoint.
const SHOWN: i64 = 20;

#[derive(Serialize)]
struct DeliveryView {
    event_type: &'static str,
    webhook_id: String,
    attempts: i64,
    status: &'static str,
    response_code: Option<i64>,
    error: Option<String>,
    when: String,
    when_utc: String,
    next_attempt: Option<String>,
}

#[derive(Serialize)]
struct EndpointView {
    name: String,
    url: String,
    events: String,
    /// The events field as typed (empty: every event).
    events_input: String,
    origin: &'static str,
    /// Edited or added on the page: it can be reverted or deleted.
    removable: bool,
    added: bool,
    version: i64,
    updated: Option<String>,
    updated_utc: Option<String>,
    updated_by: Option<String>,
    /// After a rotation: until when the previous secret still signs.
    previous_until: Option<String>,
    deliveries: Vec<DeliveryView>,
    /// A refused edit of this endpoint: the message and what was typed.
    error: Option<String>,
}

/// A secret just made, shown once.
#[derive(Serialize)]
struct NewSecretView {
    endpoint: String,
    secret: String,
    overlap_hours: Option<i64>,
}

/// What was typed in a refused form, shown again with its message.
#[derive(Default, Serialize)]
struct AddDraft {
    name: String,
    url: String,
    events: String,
    error: Option<String>,
}

#[derive(Serialize)]
struct BrokenView {
    name: String,
    version: i64,
}

#[derive(Serialize)]
struct WebhooksPage {
    endpoints: Vec<EndpointView>,
    /// Stored rows that could not be used (left out; see `Webhooks::reload`).
    broken: Vec<BrokenView>,
    csrf_token: String,
    new_secret: Option<NewSecretView>,
    add: AddDraft,
    event_names: Vec<&'static str>,
}

/// A refused edit of one endpoint: its name, message and the typed URL and events.
struct EditDraft {
    name: String,
    error: String,
    url: String,
    events: String,
}

async fn render(
    app: &AppState,
    admin: &AdminUser<'_>,
    layout: Layout,
    new_secret: Option<NewSecretView>,
    add: AddDraft,
    edit: Option<EditDraft>,
) -> AppResult<Template> {
    let (hooks, cipher) = (app.webhooks.clone(), app.cipher.clone());
    let (endpoints, recent) = app
        .db
        .run(move |conn| {
            // Edits made on another instance show at once.
            hooks.reload(conn, &cipher)?;
            let endpoints = hooks.endpoints();
            let recent = endpoints
                .iter()
                .map(|e| rows::recent(conn, &e.name, SHOWN))
                .collect::<Result<Vec<_>, _>>()
                .map_err(AppError::from)?;
            Ok::<_, AppError>((endpoints, recent))
        })
        .await?;
    let t = now();
    let endpoints = endpoints
        .iter()
        .zip(recent)
        .map(|(e, deliveries)| {
            let draft = edit.as_ref().filter(|d| d.name == e.name);
            EndpointView {
                name: e.name.clone(),
                url: draft.map(|d| d.url.clone()).unwrap_or_else(|| e.url.to_string()),
                events: e.filter_text(),
                events_input: draft.map(|d| d.events.clone()).unwrap_or_else(|| e.events.join(", ")),
                origin: e.origin.as_str(),
                removable: e.origin != Origin::Config,
                added: e.origin == Origin::Added,
                version: e.version,
                updated: e.updated.as_ref().map(|(at, _)| relative_time(*at, t)),
                updated_utc: e.updated.as_ref().map(|(at, _)| format_utc(*at)),
                updated_by: e.updated.as_ref().map(|(_, by)| by.clone()),
                previous_until: e.previous_until(t).map(format_utc),
                error: draft.map(|d| d.error.clone()),
                deliveries: deliveries
                    .into_iter()
                    .map(|(d, ev)| DeliveryView {
                        event_type: ev.event_type.as_str(),
                        webhook_id: ev.msg_id,
                        attempts: d.attempts,
                        status: d.status.as_str(),
                        response_code: d.last_status_code,
                        error: d.last_error,
                        when: relative_time(d.updated_at, t),
                        when_utc: format_utc(d.updated_at),
                        next_attempt: (d.status == rows::DeliveryStatus::Pending)
                            .then(|| format_utc(d.next_attempt_at)),
                    })
                    .collect(),
            }
        })
        .collect();
    let event_names = crate::webhooks::EventType::ALL.iter().map(|t| t.as_str()).filter(|t| *t != "webhook.test");
    let broken: Vec<BrokenView> = app
        .webhooks
        .broken()
        .iter()
        .map(|(name, version)| BrokenView { name: name.clone(), version: *version })
        .collect();
    let body = WebhooksPage {
        endpoints,
        broken,
        csrf_token: admin.0.csrf_token.clone(),
        new_secret,
        add,
        event_names: event_names.collect(),
    };
    Ok(Template::render("admin/webhooks", Page::new(layout, "Webhooks", body)))
}

/// Run an edit on a database connection, as the signed-in administrator.
async fn edit<T: Send + 'static>(
    app: &AppState,
    admin: &AdminUser<'_>,
    f: impl FnOnce(&Editor<'_>, &mut crate::db::Conn) -> AppResult<Committed<T>> + Send + 'static,
) -> AppResult<T> {
    let (hooks, cipher, user_id, username) =
        (app.webhooks.clone(), app.cipher.clone(), admin.0.id, admin.0.username.clone());
    let committed = app
        .db
        .run(move |conn| {
            let editor = Editor { hooks: &hooks, cipher: &cipher, user_id, username: &username };
            f(&editor, conn)
        })
        .await?;
    Ok(committed.settle(app.effects()))
}

#[get("/admin/webhooks")]
async fn page(app: &State<AppState>, admin: AdminUser<'_>, layout: Layout) -> AppResult<Template> {
    render(app, &admin, layout, None, AddDraft::default(), None).await
}

#[post("/admin/webhooks/<name>/test", data = "<_form>")]
async fn send_test(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    name: &str,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    let (hooks, cipher) = (app.webhooks.clone(), app.cipher.clone());
    app.db.run(move |conn| hooks.reload(conn, &cipher)).await?;
    let endpoint = app.webhooks.get(name).ok_or(AppError::NotFound)?.name.clone();
    let (ep, by) = (endpoint.clone(), admin.0.username.clone());
    let committed = app
        .db
        .write(app.ledger(), move |tx| {
            tx.record(Change::WebhookTestQueued { endpoint: ep, by })?;
            tx.events().last().cloned().ok_or_else(|| AppError::internal("the test event was not recorded"))
        })
        .await?;
    let id = committed.settle(app.effects());
    tracing::info!(user_id = admin.0.id, endpoint = %endpoint, webhook_id = %id, "webhook test event queued");
    Ok(Flash::success(Redirect::to(uri!(page)), format!("A test event ({id}) was queued for {endpoint}.")))
}

/// No `Debug`: it carries the CSRF token.
#[derive(FromForm)]
pub struct AddForm {
    csrf_token: String,
    name: String,
    url: String,
    events: String,
}

impl CsrfField for AddForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

fn shown(endpoint: &str, secret: &Secret, rotated: bool) -> NewSecretView {
    NewSecretView {
        endpoint: endpoint.to_string(),
        secret: secret.expose_secret().to_string(),
        overlap_hours: rotated.then_some(ROTATION_OVERLAP / 3600),
    }
}

/// Add an endpoint and show its secret once, on this response (never in a redirect or flash).
#[post("/admin/webhooks", data = "<form>")]
async fn add(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    layout: Layout,
    form: Csrf<AddForm>,
) -> AppResult<(Status, Template)> {
    let form = form.into_inner();
    let (name, url, events) = (form.name.trim().to_string(), form.url.clone(), form.events.clone());
    let (n, u, e) = (name.clone(), url.clone(), events.clone());
    match edit(app, &admin, move |ed, conn| ed.add(conn, &n, &u, &e)).await {
        Ok(secret) => {
            tracing::info!(user_id = admin.0.id, endpoint = %name, "webhook endpoint added");
            let view = shown(&name, &secret, false);
            Ok((Status::Ok, render(app, &admin, layout, Some(view), AddDraft::default(), None).await?))
        }
        Err(AppError::BadRequest(message)) => {
            let draft = AddDraft { name, url, events, error: Some(message) };
            Ok((Status::UnprocessableEntity, render(app, &admin, layout, None, draft, None).await?))
        }
        Err(e) => Err(e),
    }
}

/// No `Debug`: it carries the CSRF token.
#[derive(FromForm)]
pub struct UpdateForm {
    csrf_token: String,
    version: i64,
    url: String,
    events: String,
}

impl CsrfField for UpdateForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

#[post("/admin/webhooks/<name>", data = "<form>")]
async fn update(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    layout: Layout,
    name: &str,
    form: Csrf<UpdateForm>,
) -> AppResult<Result<Flash<Redirect>, (Status, Template)>> {
    let form = form.into_inner();
    let (n, url, events, version) = (name.to_string(), form.url.clone(), form.events.clone(), form.version);
    match edit(app, &admin, move |ed, conn| ed.update(conn, &n, version, &url, &events)).await {
        Ok(()) => {
            tracing::info!(user_id = admin.0.id, endpoint = %name, "webhook endpoint updated");
            Ok(Ok(Flash::success(Redirect::to(uri!(page)), format!("{name} was saved."))))
        }
        Err(AppError::BadRequest(error)) => {
            let draft = EditDraft { name: name.to_string(), error, url: form.url, events: form.events };
            let page = render(app, &admin, layout, None, AddDraft::default(), Some(draft)).await?;
            Ok(Err((Status::UnprocessableEntity, page)))
        }
        Err(e) => Err(e),
    }
}

/// No `Debug`: it carries the CSRF token.
#[derive(FromForm)]
pub struct VersionForm {
    csrf_token: String,
    version: i64,
}

impl CsrfField for VersionForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// A new secret, shown once on this response; the old one signs too for a day.
#[post("/admin/webhooks/<name>/rotate", data = "<form>")]
async fn rotate(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    layout: Layout,
    name: &str,
    form: Csrf<VersionForm>,
) -> AppResult<Template> {
    let (n, version) = (name.to_string(), form.version);
    let secret = edit(app, &admin, move |ed, conn| ed.rotate(conn, &n, version)).await?;
    tracing::info!(user_id = admin.0.id, endpoint = %name, "webhook secret rotated");
    render(app, &admin, layout, Some(shown(name, &secret, true)), AddDraft::default(), None).await
}

/// Revert an edited configured endpoint, or delete an added one.
#[post("/admin/webhooks/<name>/delete", data = "<form>")]
async fn remove(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    name: &str,
    form: Csrf<VersionForm>,
) -> AppResult<Flash<Redirect>> {
    let (n, version) = (name.to_string(), form.version);
    let origin = edit(app, &admin, move |ed, conn| ed.remove(conn, &n, version)).await;
    let message = match origin {
        Ok(Origin::Added) => format!("{name} was deleted; its pending deliveries were given up."),
        Ok(_) => format!("{name} was reverted: its Rocket.toml URL, events and secret apply again from now on."),
        Err(AppError::BadRequest(message)) => return Ok(Flash::error(Redirect::to(uri!(page)), message)),
        Err(e) => return Err(e),
    };
    tracing::info!(user_id = admin.0.id, endpoint = %name, "webhook endpoint removed");
    Ok(Flash::success(Redirect::to(uri!(page)), message))
}

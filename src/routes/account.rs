//! The account-info page (`/services/<service>/account`): the provider's account API called with
//! the stored token (refreshed as needed), rendered as HTML.

use rocket::{get, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::CurrentUser;
use crate::db::models::connections::Which;
use crate::error::{AppError, AppResult};
use crate::oauth::access::{connection_set, pick, AccessError, Named};
use crate::oauth::account::fetch_account;
use crate::routes::services::provider;
use crate::state::AppState;
use crate::web::{fields, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![account]
}

#[derive(Serialize)]
struct AccountPage {
    service: String,
    display_name: String,
    /// `ok`, `not_connected` or `reconnect`.
    state: &'static str,
    ok: bool,
    not_connected: bool,
    reconnect: bool,
    account_id: Option<String>,
    account_name: Option<String>,
    account_email: Option<String>,
    json: String,
    /// The connection shown, and the others of the service (the picker, when there are several).
    connection_id: Option<i64>,
    accounts: Vec<PickerEntry>,
    /// The provider has an API base: the page links to its console.
    has_console: bool,
}

#[derive(Serialize)]
struct PickerEntry {
    connection_id: i64,
    label: String,
    current: bool,
}

#[get("/services/<service>/account?<connection>&<account>")]
async fn account(
    app: &State<AppState>,
    user: &CurrentUser,
    layout: Layout,
    service: &str,
    connection: Vec<String>,
    account: Vec<String>,
) -> AppResult<Template> {
    // Each at most once, as the API reads them (`?connection=1&connection=2` is a 400).
    let (connection, account) = (fields::connection_id(&connection)?, fields::once("account", &account)?);
    let p = provider(app, service)?;
    if p.account_url.is_none() {
        return Err(AppError::BadRequest(format!("{} has no account API configured.", p.display_name)));
    }
    let set = connection_set(app.tokens(), user.id, &p.name).await.map_err(|e| e.into_app_error(&p))?;
    // None named: the first connection (the page offers the others).
    let chosen = match (connection, account.filter(|a| !a.is_empty())) {
        (None, None) => set.first().cloned(),
        (connection, account) => Some(pick(&set, Named { account, connection }, &p)?),
    };
    let accounts = if set.len() > 1 {
        set.iter()
            .map(|c| PickerEntry {
                connection_id: c.id,
                label: c.account_label.clone().unwrap_or_else(|| {
                    if c.account_id.is_empty() {
                        format!("connection {}", c.id)
                    } else {
                        c.account_id.clone()
                    }
                }),
                current: chosen.as_ref().is_some_and(|x| x.id == c.id),
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut page = AccountPage {
        connection_id: chosen.as_ref().map(|c| c.id),
        accounts,
        has_console: p.api_base_url.is_some(),
        service: p.name.clone(),
        display_name: p.display_name.clone(),
        state: "ok",
        ok: false,
        not_connected: false,
        reconnect: false,
        account_id: None,
        account_name: None,
        account_email: None,
        json: String::new(),
    };
    let which = match &chosen {
        Some(c) => Which::id(user.id, c.id),
        None => Which::first(user.id),
    };
    match fetch_account(&app.access(), which, &p).await {
        Ok(info) => {
            page.ok = true;
            page.account_id = info.id;
            page.account_name = info.name;
            page.account_email = info.email;
            page.json = serde_json::to_string_pretty(&info.json).unwrap_or_default();
        }
        Err(AccessError::NotConnected) => {
            page.state = "not_connected";
            page.not_connected = true;
        }
        Err(AccessError::ReconnectRequired) => {
            page.state = "reconnect";
            page.reconnect = true;
        }
        Err(e) => return Err(e.into_app_error(&p)),
    }
    let title = format!("Your {} account", p.display_name);
    Ok(Template::render("services/account", Page::new(layout, title, page)))
}

//! The account-info page (`/services/<service>/account`): the provider's account API called with
//! the stored token (refreshed as needed), rendered as HTML.

use rocket::{get, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::CurrentUser;
use crate::error::{AppError, AppResult};
use crate::oauth::access::AccessError;
use crate::oauth::account::fetch_account;
use crate::routes::services::provider;
use crate::state::AppState;
use crate::web::{Layout, Page};

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
}

#[get("/services/<service>/account")]
async fn account(app: &State<AppState>, user: &CurrentUser, layout: Layout, service: &str) -> AppResult<Template> {
    let p = provider(app, service)?;
    if p.account_url.is_none() {
        return Err(AppError::BadRequest(format!("{} has no account API configured.", p.display_name)));
    }
    let mut page = AccountPage {
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
    match fetch_account(&app.access(), user.id, &p).await {
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

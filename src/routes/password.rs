//! My Settings → Password (`/settings/password`): change the password; every other session ends
//! and every API key is revoked.

use rocket::form::FromForm;
use rocket::http::{CookieJar, Status};
use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::{accounts, device, password, session, Csrf, CsrfField, CurrentUser};
use crate::db::models::users;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::web::{Flash, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![page, change]
}

#[derive(Serialize)]
struct PasswordPage {
    csrf_token: String,
    error: Option<String>,
}

#[get("/settings/password")]
fn page(user: &CurrentUser, layout: Layout) -> Template {
    let body = PasswordPage { csrf_token: user.csrf_token.clone(), error: None };
    Template::render("settings/password", Page::new(layout, "Change your password", body))
}

#[derive(FromForm)]
pub struct PasswordForm {
    csrf_token: String,
    current_password: String,
    new_password: String,
    new_password_confirm: String,
}

impl CsrfField for PasswordForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

#[post("/settings/password", data = "<form>")]
async fn change(
    app: &State<AppState>,
    ip: Option<std::net::IpAddr>,
    user: &CurrentUser,
    layout: Layout,
    cookies: &CookieJar<'_>,
    form: Csrf<PasswordForm>,
) -> AppResult<Result<Flash<Redirect>, (Status, Template)>> {
    let form = form.into_inner();
    // The same limits as a sign-in: the current password is a guess like any other.
    if app.login_throttle.check_address(ip, "password change").is_err() {
        return Err(AppError::TooManyRequests);
    }
    let key = accounts::throttle_key(&user.username);
    let uid = user.id;
    let current = app.db.run(move |conn| Ok(users::find(conn, uid)?)).await?.ok_or(AppError::NotFound)?;
    let claim = device::presented(cookies, &key).claim(Some(device::Account::from(&current)));
    let Ok(admission) = app.login_throttle.admit(ip, &key, claim) else {
        return Err(AppError::TooManyRequests);
    };
    let verified = app.hasher.verify(crate::util::secret(form.current_password), Some(current.password_hash)).await;
    let current_ok = verified.inspect_err(|_| app.login_throttle.unchecked(&key, &admission))?;
    if current_ok {
        app.login_throttle.succeeded(&key, &admission);
    } else {
        app.login_throttle.failed(ip, &key, &admission);
    }
    let problem = if !current_ok {
        Some("Your current password is not right.".to_string())
    } else if form.new_password != form.new_password_confirm {
        Some("The two new passwords do not match.".to_string())
    } else {
        password::check_policy(&form.new_password).err()
    };
    if let Some(error) = problem {
        let body = PasswordPage { csrf_token: user.csrf_token.clone(), error: Some(error) };
        let page = Template::render("settings/password", Page::new(layout, "Change your password", body));
        return Ok(Err((Status::UnprocessableEntity, page)));
    }
    let hash = app.hasher.hash(crate::util::secret(form.new_password)).await?;
    // Every session ends, this one too (a fresh one is started below), and every API key is
    // revoked: whoever knew the old password may have made one.
    // Device cookies issued before are void (the password epoch moved on); this browser, which
    // just proved both passwords, gets a fresh one.
    let done = accounts::change_password(app, uid, hash, ip).await?;
    session::start(&app.db, &app.settings, cookies, uid).await?;
    device::issue(cookies, &app.settings, &key, device::Account { user_id: uid, password_epoch: done.password_epoch });
    let keys = done.revoked_key_hashes.len();
    tracing::info!(user_id = uid, sessions_ended = done.sessions_ended, api_keys_revoked = keys, "password changed");
    let revoked = match keys {
        0 => String::new(),
        1 => " Your API key was revoked: create a new one on the API keys page.".to_string(),
        n => format!(" Your {n} API keys were revoked: create new ones on the API keys page."),
    };
    Ok(Ok(Flash::success(
        Redirect::to(uri!(page)),
        format!("Your password was changed. You were signed out everywhere else.{revoked}"),
    )))
}

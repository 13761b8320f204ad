//! `/login`, `/signup`, `POST /logout`.

use rocket::form::FromForm;
use rocket::http::{CookieJar, Status};
use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::audit;
use crate::auth::throttle::DeviceClaim;
use crate::auth::{accounts, device, session, Csrf, CsrfField, CsrfOnly, CurrentUser};
use crate::changes::Change;
use crate::db::models::users;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::web::{safe_next, Flash, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![login_page, login, signup_page, signup, logout]
}

#[derive(Serialize)]
struct AuthForm {
    csrf_token: String,
    next: String,
    username: String,
    error: Option<String>,
    allow_signup: bool,
}

type PageResponse = (Status, Template);

fn render(template: &'static str, title: &str, layout: Layout, status: Status, form: AuthForm) -> PageResponse {
    (status, Template::render(template, Page::new(layout, title, form)))
}

fn next_or_home(next: Option<&str>) -> String {
    next.and_then(safe_next).unwrap_or_else(|| "/".into())
}

#[get("/login?<next>")]
fn login_page(
    app: &State<AppState>,
    user: Option<&CurrentUser>,
    layout: Layout,
    cookies: &CookieJar<'_>,
    next: Option<&str>,
) -> Result<PageResponse, Redirect> {
    let next = next_or_home(next);
    if user.is_some() {
        return Err(Redirect::to(next));
    }
    let form = AuthForm {
        csrf_token: session::anonymous_csrf_token(cookies, &app.settings),
        next,
        username: String::new(),
        error: None,
        allow_signup: app.settings.allow_signup,
    };
    Ok(render("auth/login", "Sign in", layout, Status::Ok, form))
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct LoginForm {
    csrf_token: String,
    username: String,
    password: String,
    next: Option<String>,
}

impl CsrfField for LoginForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

#[post("/login", data = "<form>")]
async fn login(
    app: &State<AppState>,
    ip: Option<std::net::IpAddr>,
    layout: Layout,
    cookies: &CookieJar<'_>,
    form: Csrf<LoginForm>,
) -> AppResult<Result<Flash<Redirect>, PageResponse>> {
    let LoginForm { username, password, next, .. } = form.into_inner();
    let next = next_or_home(next.as_deref());
    let again = |username: String, error: String, status: Status| {
        let form = AuthForm {
            csrf_token: session::anonymous_csrf_token(cookies, &app.settings),
            next: next.clone(),
            username,
            error: Some(error),
            allow_signup: app.settings.allow_signup,
        };
        Ok(Err(render("auth/login", "Sign in", layout, status, form)))
    };
    match sign_in(app, ip, cookies, username, password).await? {
        SignIn::Throttled => Err(AppError::TooManyRequests),
        // No account has such a name: not echoed back.
        SignIn::NameTooLong => again(
            String::new(),
            format!("Usernames are at most {} characters.", accounts::MAX_USERNAME_LEN),
            Status::UnprocessableEntity,
        ),
        SignIn::Refused { username } => {
            again(username, "That username and password do not match an account.".into(), Status::Unauthorized)
        }
        SignIn::SignedIn(user) => Ok(Ok(Flash::success(Redirect::to(next), format!("Welcome, {}.", user.username)))),
    }
}

/// How a sign-in attempt ended.
enum SignIn {
    /// Over the address's limit, or the account's for this address and device (429).
    Throttled,
    /// A username longer than any account's: refused before it reaches any map or the hasher.
    NameTooLong,
    /// No such account, or not its password (the form shows the name typed).
    Refused { username: String },
    /// Signed in: the session is started and its cookies set.
    SignedIn(users::User),
}

/// One sign-in attempt: the limits (address first, then the account with its device cookie),
/// the password checked, and what follows — a session, an audit entry, the throttle and the
/// device cookie told.
async fn sign_in(
    app: &AppState,
    ip: Option<std::net::IpAddr>,
    cookies: &CookieJar<'_>,
    username: String,
    password: String,
) -> AppResult<SignIn> {
    // Refused attempts are audited through the bounded batcher: no database write of their own.
    let refused = |why: &str| {
        let e = audit::Entry::new(audit::Kind::SigninFailure, audit::Actor::System).address(ip).with("refused", why);
        app.audit.refusal(e);
    };
    // The address's limit first: an address over it gets no further (no hashing, no state).
    if app.login_throttle.check_address(ip, "sign-in").is_err() {
        refused("address_throttled");
        return Ok(SignIn::Throttled);
    }
    let username = accounts::clean_username(&username).to_string();
    if username.len() > accounts::MAX_USERNAME_LEN {
        refused("username_too_long");
        return Ok(SignIn::NameTooLong);
    }
    // The account, in the one form the throttle and device cookies key on (any case of a name
    // is the same account).
    let key = accounts::throttle_key(&username);
    let lookup = || {
        let name = key.clone();
        app.db.run(move |conn| Ok(users::find_by_username(conn, &name)?))
    };
    // A device cookie naming this username counts only if it was issued to this very account
    // under its current password: look the account up first (only for such a cookie).
    let presented = device::presented(cookies, &key);
    let found = if presented.names_account() { Some(lookup().await?) } else { None };
    let claim = presented.claim(found.as_ref().and_then(Option::as_ref).map(device::Account::from));
    if claim == DeviceClaim::Invalid {
        device::remove_invalid(cookies);
    }
    let Ok(admission) = app.login_throttle.admit(ip, &key, claim) else {
        refused("throttled");
        return Ok(SignIn::Throttled);
    };
    let user = match found {
        Some(user) => user,
        None => lookup().await?,
    };
    let verified =
        app.hasher.verify(crate::util::secret(password), user.as_ref().map(|u| u.password_hash.clone())).await;
    let ok = verified.inspect_err(|_| app.login_throttle.unchecked(&key, &admission))?;
    if !ok {
        app.login_throttle.failed(ip, &key, &admission);
    }
    match user {
        Some(user) if ok => {
            session::start(&app.db, &app.settings, cookies, user.id).await?;
            app.record(Change::SignedIn { user_id: user.id, address: ip }).await?;
            app.login_throttle.succeeded(&key, &admission);
            device::issue(cookies, &app.settings, &key, device::Account::from(&user));
            tracing::info!(user_id = user.id, "signed in");
            Ok(SignIn::SignedIn(user))
        }
        _ => {
            tracing::info!("failed sign-in attempt");
            let user_id = user.as_ref().map(|u| u.id);
            app.record(Change::SignInRefused { user_id, username: username.clone(), address: ip }).await?;
            Ok(SignIn::Refused { username })
        }
    }
}

#[get("/signup")]
fn signup_page(
    app: &State<AppState>,
    user: Option<&CurrentUser>,
    layout: Layout,
    cookies: &CookieJar<'_>,
) -> AppResult<Result<PageResponse, Redirect>> {
    if !app.settings.allow_signup {
        return Err(AppError::NotFound);
    }
    if user.is_some() {
        return Ok(Err(Redirect::to(uri!(crate::routes::home::index))));
    }
    let form = AuthForm {
        csrf_token: session::anonymous_csrf_token(cookies, &app.settings),
        next: "/".into(),
        username: String::new(),
        error: None,
        allow_signup: true,
    };
    Ok(Ok(render("auth/signup", "Create an account", layout, Status::Ok, form)))
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct SignupForm {
    csrf_token: String,
    username: String,
    password: String,
    password_confirm: String,
}

impl CsrfField for SignupForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

#[post("/signup", data = "<form>")]
async fn signup(
    app: &State<AppState>,
    ip: Option<std::net::IpAddr>,
    layout: Layout,
    cookies: &CookieJar<'_>,
    form: Csrf<SignupForm>,
) -> AppResult<Result<Flash<Redirect>, PageResponse>> {
    if !app.settings.allow_signup {
        return Err(AppError::NotFound);
    }
    if app.login_throttle.check_address(ip, "sign-up").is_err() {
        return Err(AppError::TooManyRequests);
    }
    let form = form.into_inner();
    let username = accounts::clean_username(&form.username).to_string();
    let problem = if form.password != form.password_confirm {
        Some("The two passwords do not match.".to_string())
    } else {
        // Outside the debug profile a sign-up never makes an administrator (the first one comes
        // from `tokenvault user add --admin`).
        let role = if app.settings.dev_mode { accounts::Role::FirstIsAdmin } else { accounts::Role::User };
        let (name, pw) = (username.clone(), crate::util::secret(form.password));
        let created = match accounts::check_new(&name, &pw) {
            Ok(()) => {
                // Hash first, with no database connection held, then insert.
                let hash = app.hasher.hash(pw).await?;
                // Recorded right after the insert, not inside it: `create` is an immediate
                // (on PostgreSQL SERIALIZABLE) transaction, which cannot be nested.
                accounts::sign_up(app, name, hash, role, ip).await
            }
            Err(e) => Err(e),
        };
        match created {
            Ok(user) => {
                session::start(&app.db, &app.settings, cookies, user.id).await?;
                let key = accounts::throttle_key(&user.username);
                device::issue(cookies, &app.settings, &key, device::Account::from(&user));
                tracing::info!(user_id = user.id, admin = user.is_admin, "account created");
                return Ok(Ok(Flash::success(
                    Redirect::to(uri!(crate::routes::home::index)),
                    format!("Welcome to tokenvault, {}.", user.username),
                )));
            }
            Err(AppError::BadRequest(msg)) => Some(msg),
            Err(e) => return Err(e),
        }
    };
    let form = AuthForm {
        csrf_token: session::anonymous_csrf_token(cookies, &app.settings),
        next: "/".into(),
        username,
        error: problem,
        allow_signup: true,
    };
    Ok(Err(render("auth/signup", "Create an account", layout, Status::UnprocessableEntity, form)))
}

#[post("/logout", data = "<_form>")]
async fn logout(
    app: &State<AppState>,
    user: Option<&CurrentUser>,
    ip: Option<std::net::IpAddr>,
    cookies: &CookieJar<'_>,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    session::end(&app.db, &app.settings, cookies).await?;
    if let Some(uid) = user.map(|u| u.id) {
        app.record(Change::SignedOut { user_id: uid, address: ip }).await?;
    }
    Ok(Flash::success(Redirect::to(uri!(login_page(_))), "You are signed out."))
}

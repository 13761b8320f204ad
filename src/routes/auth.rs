//! `/login`, `/signup`, `POST /logout`.

use rocket::form::FromForm;
use rocket::http::{CookieJar, Status};
use rocket::response::Redirect;
use rocket::{get, post, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::app::AppState;
use crate::auth::{accounts, password, session, Csrf, CsrfField, CsrfOnly, CurrentUser};
use crate::db::models::users;
use crate::error::{AppError, AppResult};
use crate::util::Secret;
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
    let form = form.into_inner();
    let username = form.username.trim().to_string();
    if !app.login_throttle.allow_login(ip, &username) {
        tracing::warn!("sign-in throttled");
        return Err(AppError::TooManyRequests);
    }
    let lookup = username.clone();
    let user = app.db.run(move |conn| Ok(users::find_by_username(conn, &lookup)?)).await?;
    let ok = password::verify(Secret::new(form.password), user.as_ref().map(|u| u.password_hash.clone())).await;
    match user {
        Some(user) if ok => {
            session::start(&app.db, &app.settings, cookies, user.id).await?;
            tracing::info!(user_id = user.id, "signed in");
            let next = next_or_home(form.next.as_deref());
            Ok(Ok(Flash::success(Redirect::to(next), format!("Welcome, {}.", user.username))))
        }
        _ => {
            tracing::info!("failed sign-in attempt");
            let form = AuthForm {
                csrf_token: session::anonymous_csrf_token(cookies, &app.settings),
                next: next_or_home(form.next.as_deref()),
                username,
                error: Some("That username and password do not match an account.".into()),
                allow_signup: app.settings.allow_signup,
            };
            Ok(Err(render("auth/login", "Sign in", layout, Status::Unauthorized, form)))
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
        return Ok(Err(Redirect::to("/")));
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
    if !app.login_throttle.allow_signup(ip) {
        return Err(AppError::TooManyRequests);
    }
    let form = form.into_inner();
    let username = form.username.trim().to_string();
    let problem = if form.password != form.password_confirm {
        Some("The two passwords do not match.".to_string())
    } else {
        let (name, pw) = (username.clone(), Secret::new(form.password));
        match app.db.run(move |conn| accounts::create(conn, &name, &pw, false)).await {
            Ok(user) => {
                session::start(&app.db, &app.settings, cookies, user.id).await?;
                tracing::info!(user_id = user.id, admin = user.is_admin, "account created");
                return Ok(Ok(Flash::success(Redirect::to("/"), format!("Welcome to tokenvault, {}.", user.username))));
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
async fn logout(app: &State<AppState>, cookies: &CookieJar<'_>, _form: Csrf<CsrfOnly>) -> AppResult<Flash<Redirect>> {
    session::end(&app.db, &app.settings, cookies).await?;
    Ok(Flash::success(Redirect::to("/login"), "You are signed out."))
}

//! The email channel on the real servers (Kafka, PostgreSQL, ClickHouse), with a local SMTP
//! server (tests/common/smtp.rs) that captures each message as it arrived: the exact headers,
//! both parts, the unsubscribe link; following the link stops further email; a replayed
//! signal sends nothing; SMTP 4xx is retried and 5xx dead-lettered.

mod common;

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use common::signals::publish_signals as publish;
use common::smtp::{Received, SmtpServer};
use common::*;
use meterline::services::{self, Components, Running};
use meterline::Config;
use meterline_notifier::email::TlsMode;
use meterline_schemas::{AccountSignal, SignalKind, UnsubscribeKey};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const FROM: &str = "Meterline Growth <growth@meterline.example>";
/// `FROM` as lettre writes it: a display name with a space is quoted.
const FROM_HEADER: &str = "\"Meterline Growth\" <growth@meterline.example>";
const REPLY_TO: &str = "Support <support@meterline.example>";

/// The notifier routes `pql` to email, through `smtp`; links start with `base`.
fn config(smtp: &SmtpServer, dir: &std::path::Path, base: &str) -> Config {
    let id = unique_suffix();
    let mut c = isolated_config(&id);
    c.privacy.unsubscribe_key = format!("unsubscribe-key-{id}");
    let n = &mut c.notifier;
    n.group_id = format!("mlt-{id}-notifier");
    n.data_dir = dir.display().to_string();
    n.poll_interval_ms = 100;
    n.lease_ms = 5_000;
    n.backoff_base_ms = 50;
    n.backoff_max_ms = 200;
    n.max_attempts = 3;
    n.routes.insert(SignalKind::Pql, vec!["email".into()]);
    let e = &mut n.email;
    e.smtp.host = smtp.addr.ip().to_string();
    e.smtp.port = smtp.addr.port();
    e.smtp.tls = TlsMode::None;
    e.smtp.timeout_ms = 5_000;
    e.from = FROM.into();
    e.reply_to = REPLY_TO.into();
    e.public_base_url = base.into();
    c.http.notifier_listen = format!("127.0.0.1:{}", free_port());
    c
}

fn pql(account: &str, episode: &str, at: DateTime<Utc>) -> AccountSignal {
    AccountSignal {
        signal_id: format!("{account}:pql:{episode}"),
        kind: SignalKind::Pql,
        account_id: account.into(),
        episode: episode.into(),
        raised_at: at.timestamp_micros(),
        plan: "free".into(),
        deal_readiness: 20,
        pql: 72,
        abuse: 0,
        reasons: vec!["monthly_requests (+30): 8123 requests this month".into()],
        evidence: "{}".into(),
    }
}

/// The account's email notifications: (signal id, status, attempts, detail, last error).
type Row = (String, String, i32, Option<String>, Option<String>);

async fn emails(pool: &sqlx::PgPool, account: &str) -> Vec<Row> {
    sqlx::query_as(
        "SELECT signal_id, status, attempts, detail, last_error FROM notifications \
         WHERE account_id = $1 AND destination = 'email' ORDER BY id",
    )
    .bind(account)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_for_status(pool: &sqlx::PgPool, account: &str, signal_id: &str, want: &str) -> Row {
    wait_for(
        &format!("{signal_id}'s email {want}"),
        Duration::from_secs(30),
        || async {
            let rows = emails(pool, account).await;
            let row = rows.into_iter().find(|r| r.0 == signal_id);
            match row {
                Some(r) if r.1 == want => Ok(r),
                other => Err(other),
            }
        },
    )
    .await
}

/// A message split as a reader sees it: the top-level headers (unfolded, in order) and each
/// part's headers and decoded body.
struct Parsed {
    headers: Vec<(String, String)>,
    parts: Vec<(Vec<(String, String)>, String)>,
}

fn header_block(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            out.last_mut().unwrap().1.push_str(line);
        } else {
            let (name, value) = line.split_once(':').unwrap();
            out.push((name.to_owned(), value.trim_start().to_owned()));
        }
    }
    out
}

fn parse(raw: &str) -> Parsed {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let headers = header_block(head);
    let content_type = &headers.iter().find(|(n, _)| n == "Content-Type").unwrap().1;
    let boundary = content_type
        .split("boundary=\"")
        .nth(1)
        .and_then(|b| b.split('"').next())
        .unwrap_or_else(|| panic!("no boundary in {content_type:?}"));
    let mut sections: Vec<&str> = body.split(&format!("--{boundary}")).collect();
    assert_eq!(
        sections.pop().map(str::trim),
        Some("--"),
        "the closing boundary"
    );
    let parts = sections[1..]
        .iter()
        .map(|p| {
            let p = p.strip_prefix("\r\n").unwrap();
            let (h, b) = p.split_once("\r\n\r\n").unwrap();
            let b = b.strip_suffix("\r\n").unwrap();
            let decoded = quoted_printable::decode(b, quoted_printable::ParseMode::Robust).unwrap();
            (header_block(h), String::from_utf8(decoded).unwrap())
        })
        .collect();
    Parsed { headers, parts }
}

/// Ingest on a port known before the configuration is made (the links name it), with the
/// aggregator and the notifier.
async fn start(smtp: &SmtpServer, dir: &std::path::Path) -> (Config, Running, String, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let c = config(smtp, dir, &base);
    let token = prepare(&c).await;
    let running = services::start(
        &c,
        Components::none().ingest().aggregator().notifier(),
        Some(listener),
        CancellationToken::new(),
    )
    .await
    .expect("components start");
    (c, running, base, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_email_then_one_click_unsubscribe_stops_the_next_and_a_replay_sends_nothing() {
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (c, running, base, ingest_token) = start(&smtp, dir.path()).await;
    let pool = meterline::migrate::connect_postgres(&c).await.unwrap();
    let http = reqwest::Client::new();
    let ana = format!("ana-{}", unique_suffix());
    let bo = format!("bo-{}", unique_suffix());
    let cy = format!("cy-{}", unique_suffix());

    // Signups through ingest: two with a contact email, one without.
    let signup = |account: &str, email: Option<&str>| {
        let mut e = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "occurred_at": (Utc::now() - ChronoDuration::days(20)).to_rfc3339(),
            "account_id": account,
            "type": "signup",
            "email_domain": "example.com",
        });
        if let Some(email) = email {
            e["contact_email"] = email.into();
        }
        e
    };
    let resp = http
        .post(format!("{base}/v1/account-events"))
        .bearer_auth(&ingest_token)
        .json(&json!([
            signup(&ana, Some("Ana.Lima@Example.com")),
            signup(&bo, Some("bo@example.com")),
            signup(&cy, None),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    // A bad address is refused naming the field, without repeating it.
    let mut bad = signup(&cy, Some("cy at example.com"));
    bad["type"] = "profile_updated".into();
    let resp = http
        .post(format!("{base}/v1/account-events"))
        .bearer_auth(&ingest_token)
        .json(&json!([bad]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["accepted"], 0, "{body}");
    let error = body["rejected"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("contact_email: not an email address"),
        "{error}"
    );
    assert!(!error.contains("cy at example.com"), "{error}");

    wait_for("the contact emails in accounts", Duration::from_secs(30), || async {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT account_id, contact_email FROM accounts WHERE account_id = ANY($1) ORDER BY account_id",
        )
        .bind(vec![ana.clone(), bo.clone(), cy.clone()])
        .fetch_all(&pool)
        .await
        .unwrap();
        check(rows, |r| r.len() == 3)
    })
    .await;
    let stored: (Option<String>,) =
        sqlx::query_as("SELECT contact_email FROM accounts WHERE account_id = $1")
            .bind(&ana)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored.0.as_deref(), Some("Ana.Lima@example.com"));

    // The first PQL crossing, ten days ago (the next one is outside the email cooldown).
    let first = pql(&ana, "e1", Utc::now() - ChronoDuration::days(10));
    publish(&c, std::slice::from_ref(&first), "k").await;
    let sent = wait_for_status(&pool, &ana, &first.signal_id, "sent").await;
    assert_eq!(sent.2, 1, "one attempt");
    let (id,): (i64,) = sqlx::query_as(
        "SELECT id FROM notifications WHERE signal_id = $1 AND destination = 'email'",
    )
    .bind(&first.signal_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let got = smtp.accepted();
    assert_eq!(got.len(), 1);
    let Received {
        mail_from,
        rcpt_to,
        data,
        ..
    } = &got[0];
    assert_eq!(mail_from, "growth@meterline.example");
    assert_eq!(rcpt_to, &vec!["Ana.Lima@example.com".to_owned()]);

    let token = UnsubscribeKey::new(&c.privacy.unsubscribe_key).token(&ana);
    assert_eq!(token.len(), 64);
    let link = format!("{base}/v1/email/unsubscribe/{ana}/{token}");
    let m = parse(data);
    let names: Vec<&str> = m.headers.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "Content-Type",
            "Date",
            "From",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "MIME-Version",
            "Message-ID",
            "Reply-To",
            "Subject",
            "To",
        ],
        "{data}"
    );
    let header = |name: &str| {
        m.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    };
    assert_eq!(header("From"), FROM_HEADER);
    assert_eq!(header("Reply-To"), REPLY_TO);
    assert_eq!(header("To"), "Ana.Lima@example.com");
    assert_eq!(header("Subject"), "Your team is ready for Pro");
    assert_eq!(
        header("Message-ID"),
        format!("<meterline-notification-{id}@meterline.example>")
    );
    assert_eq!(header("List-Unsubscribe"), format!("<{link}>"));
    assert_eq!(
        header("List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    assert_eq!(header("MIME-Version"), "1.0");
    assert!(
        DateTime::parse_from_rfc2822(header("Date")).is_ok(),
        "{}",
        header("Date")
    );
    assert!(header("Content-Type").starts_with("multipart/alternative;"));
    assert_eq!(m.parts.len(), 2);
    let part_headers = |i: usize| {
        m.parts[i]
            .0
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        part_headers(0),
        [
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable"
        ]
    );
    assert_eq!(
        part_headers(1),
        [
            "Content-Type: text/html; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable"
        ]
    );
    assert_eq!(
        m.parts[0].1,
        format!(
            "Hello,\n\n\
             Your team is getting a lot out of the free plan, and it is close to what the free plan holds.\n\n\
             Pro gives you 1,000 requests/minute and 15 models ($49 per seat per month).\n\n\
             Upgrade to Pro: https://app.example.com/billing/upgrade?plan=pro\n\n\
             --\n\
             You get this email because you signed up for the free plan.\n\
             Unsubscribe with one click: {link}\n"
        )
        // On the wire every line ends in CRLF.
        .replace('\n', "\r\n")
    );
    let escaped_link = link.replace('/', "&#x2f;");
    assert_eq!(
        m.parts[1].1,
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<body>\n\
             <p>Hello,</p>\n\
             <p>Your team is getting a lot out of the free plan, and it is close to what the free plan holds.</p>\n\
             <p>Pro gives you 1,000 requests&#x2f;minute and 15 models ($49 per seat per month).</p>\n\
             <p><a href=\"https:&#x2f;&#x2f;app.example.com&#x2f;billing&#x2f;upgrade?plan=pro\">Upgrade to Pro</a></p>\n\
             <hr>\n\
             <p style=\"font-size:12px;color:#666\">You get this email because you signed up for the free plan. \
             <a href=\"{escaped_link}\">Unsubscribe</a> with one click.</p>\n\
             </body>\n</html>\n"
        )
        .replace('\n', "\r\n")
    );

    // The same signal again (a replay), and a PQL crossing for an account with no contact
    // email; then Bo's, behind them in the partition: once Bo's email is in, the notifier has
    // decided on both before it.
    let cys = pql(&cy, "e1", Utc::now());
    let bos = pql(&bo, "e1", Utc::now());
    publish(&c, &[first.clone(), cys.clone(), bos.clone()], "k").await;
    wait_for_status(&pool, &bo, &bos.signal_id, "sent").await;
    let got = smtp.accepted();
    assert_eq!(got.len(), 2, "Ana's once, Bo's once");
    assert_eq!(got[1].rcpt_to, vec!["bo@example.com".to_owned()]);
    assert_eq!(
        emails(&pool, &ana).await.len(),
        1,
        "the replay queued nothing"
    );
    let skipped = wait_for_status(&pool, &cy, &cys.signal_id, "skipped").await;
    assert_eq!(
        skipped.3.as_deref(),
        Some("email skipped: the account has no contact email (signup or profile_updated contact_email)")
    );

    // The link: GET shows a confirmation page and changes nothing; a forged token is refused;
    // POST (RFC 8058 one-click) unsubscribes.
    let page = http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\">"), "{html}");
    let forged = format!(
        "{base}/v1/email/unsubscribe/{ana}/{}",
        UnsubscribeKey::new("other").token(&ana)
    );
    let resp = http.post(&forged).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("token: not a valid unsubscribe link"));
    let other = format!("{base}/v1/email/unsubscribe/{bo}/{token}");
    assert_eq!(
        http.post(&other).send().await.unwrap().status(),
        403,
        "Ana's token for Bo"
    );
    let resp = http
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("You are unsubscribed"));

    // The event reaches PostgreSQL through Kafka and the aggregator.
    wait_for(
        "the unsubscribe applied",
        Duration::from_secs(30),
        || async {
            let row: (Option<DateTime<Utc>>,) =
                sqlx::query_as("SELECT email_unsubscribed_at FROM accounts WHERE account_id = $1")
                    .bind(&ana)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            check(row.0, |at| at.is_some())
        },
    )
    .await;
    let events: Vec<(String,)> = sqlx::query_as(
        "SELECT type FROM account_events WHERE account_id = $1 ORDER BY occurred_at",
    )
    .bind(&ana)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [("signup".to_owned(),), ("email_unsubscribed".to_owned(),)]
    );

    // Another crossing, outside the cooldown: recorded as skipped, never sent.
    let second = pql(&ana, "e2", Utc::now());
    publish(&c, std::slice::from_ref(&second), "k").await;
    let skipped = wait_for_status(&pool, &ana, &second.signal_id, "skipped").await;
    assert!(
        skipped
            .3
            .as_deref()
            .unwrap()
            .starts_with("email skipped: the account holder unsubscribed at "),
        "{skipped:?}"
    );
    assert_eq!(smtp.received().len(), 2, "nothing more reached the server");

    // ClickHouse has the account events, and no address anywhere in them.
    let tsv = http
        .post(format!(
            "{}/?database={}",
            c.clickhouse.url, c.clickhouse.database
        ))
        .body(format!(
            "SELECT * FROM account_events WHERE account_id = '{ana}' FORMAT TSV"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(tsv.lines().count(), 2, "{tsv}");
    assert!(tsv.contains("email_unsubscribed"), "{tsv}");
    assert!(!tsv.to_lowercase().contains("ana.lima"), "{tsv}");
    running.stop().await.unwrap();
}

/// SMTP answers decide: 451 is retried and then delivered; 550 dead-letters at once, with
/// the server's words and not the address in `last_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_4xx_is_retried_and_5xx_is_dead_lettered() {
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let c = config(&smtp, dir.path(), "https://meterline.example.com");
    prepare(&c).await;
    let pool = meterline::migrate::connect_postgres(&c).await.unwrap();
    let grey = format!("grey-{}", unique_suffix());
    let gone = format!("gone-{}", unique_suffix());
    for (account, email) in [(&grey, "grey@example.com"), (&gone, "gone@example.com")] {
        sqlx::query(
            "INSERT INTO accounts (account_id, plan, contact_email) VALUES ($1, 'free', $2)",
        )
        .bind(account)
        .bind(email)
        .execute(&pool)
        .await
        .unwrap();
    }
    let running = services::start(
        &c,
        Components::none().notifier(),
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    smtp.script(&[(451, "4.7.1 greylisted, try again later")]);
    let s = pql(&grey, "e1", Utc::now());
    publish(&c, std::slice::from_ref(&s), "k").await;
    let row = wait_for_status(&pool, &grey, &s.signal_id, "sent").await;
    assert_eq!(row.2, 2, "one refusal, one delivery");
    let received = smtp.received();
    assert_eq!(
        received.iter().map(|r| r.code).collect::<Vec<_>>(),
        [451, 250]
    );
    // The same message again (the multipart boundary and the Date aside).
    let same = |r: &Received| {
        let m = parse(&r.data);
        let headers: Vec<(String, String)> = m
            .headers
            .into_iter()
            .filter(|(n, _)| n != "Date" && n != "Content-Type")
            .collect();
        (headers, m.parts)
    };
    assert_eq!(
        same(&received[0]),
        same(&received[1]),
        "the same message again"
    );

    smtp.script(&[(550, "5.1.1 <gone@example.com>: mailbox unavailable")]);
    let s = pql(&gone, "e1", Utc::now());
    publish(&c, std::slice::from_ref(&s), "k").await;
    let row = wait_for_status(&pool, &gone, &s.signal_id, "dead").await;
    assert_eq!(row.2, 1, "a permanent refusal is not retried");
    let error = row.4.unwrap();
    assert!(error.contains("550"), "{error}");
    assert!(error.contains("mailbox unavailable"), "{error}");
    assert!(!error.contains("gone@example.com"), "{error}");
    assert_eq!(smtp.received().len(), 3);
    running.stop().await.unwrap();
}

/// No SMTP server configured (the default): the rendered email is a file in the local sink,
/// without the recipient's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_smtp_server_the_email_goes_to_the_local_sink_without_the_address() {
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&smtp, dir.path(), "https://meterline.example.com");
    c.notifier.email.smtp = Default::default();
    prepare(&c).await;
    let pool = meterline::migrate::connect_postgres(&c).await.unwrap();
    let acct = format!("local-{}", unique_suffix());
    sqlx::query("INSERT INTO accounts (account_id, plan, contact_email) VALUES ($1, 'free', 'dee@example.com')")
        .bind(&acct)
        .execute(&pool)
        .await
        .unwrap();
    let running = services::start(
        &c,
        Components::none().notifier(),
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let s = pql(&acct, "e1", Utc::now());
    publish(&c, std::slice::from_ref(&s), "k").await;
    wait_for_status(&pool, &acct, &s.signal_id, "sent").await;
    let (delivered,): (String,) = sqlx::query_as(
        "SELECT delivered_to FROM notifications WHERE signal_id = $1 AND destination = 'email'",
    )
    .bind(&s.signal_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let path = delivered.strip_prefix("local:").unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["destination"], "email");
    assert_eq!(doc["request"]["subject"], "Your team is ready for Pro");
    let token = UnsubscribeKey::new(&c.privacy.unsubscribe_key).token(&acct);
    assert_eq!(
        doc["request"]["unsubscribe_url"],
        format!("https://meterline.example.com/v1/email/unsubscribe/{acct}/{token}")
    );
    assert!(!text.contains("dee@example.com"), "{text}");
    assert!(smtp.received().is_empty());
    running.stop().await.unwrap();
}

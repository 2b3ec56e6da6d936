//! `GET /console/lists/{list}[?plan=&sort=&dir=&page=]` and `…/csv`: the accounts people work
//! through, paged on the server.
//!
//! | list | accounts |
//! |---|---|
//! | `deal-ready` | deal readiness above the scorer's `deal.ready_above` |
//! | `pql` | PQL score at or above `pql.qualified_at` |
//! | `near-limit` | any limit at a warning stage or at its limit |
//! | `power-users` | the power-user rule holds |
//! | `escalations` | an auto-escalation tag |
//! | `flagged` | in review: `suspected` or `auto_denied` |
//!
//! Each reads the scorer's `account_scores` joined with `accounts` (plan, domain, review
//! state): one query for the page, one for the count. The sort column and direction are
//! chosen from a fixed list, never written into SQL from the request.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use minijinja::context;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::when;
use crate::error::{ConsoleError, Result};
use crate::session::Session;
use crate::templates::{page as render, Page};
use crate::ConsoleState;

/// The thresholds lists are cut at: the scorer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// `scorer.deal.ready_above`: deal readiness above this is deal-ready.
    pub deal_ready_above: u32,
    /// `scorer.pql.qualified_at`.
    pub pql_qualified_at: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            deal_ready_above: 70,
            pql_qualified_at: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    DealReady,
    Pql,
    NearLimit,
    PowerUsers,
    Escalations,
    Flagged,
}

impl List {
    pub const ALL: [List; 6] = [
        List::DealReady,
        List::Pql,
        List::NearLimit,
        List::PowerUsers,
        List::Escalations,
        List::Flagged,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            List::DealReady => "deal-ready",
            List::Pql => "pql",
            List::NearLimit => "near-limit",
            List::PowerUsers => "power-users",
            List::Escalations => "escalations",
            List::Flagged => "flagged",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            List::DealReady => "Deal-ready",
            List::Pql => "Product-qualified leads",
            List::NearLimit => "Near or at a limit",
            List::PowerUsers => "Power users",
            List::Escalations => "Escalations",
            List::Flagged => "Flagged for review",
        }
    }

    pub fn parse(s: &str) -> Result<List> {
        List::ALL
            .into_iter()
            .find(|l| l.slug() == s)
            .ok_or_else(|| {
                ConsoleError::NotFound(format!(
                    "list: {s:?} is not one of deal-ready, pql, near-limit, power-users, escalations, flagged"
                ))
            })
    }

    /// The list's condition; `$1` is its threshold when it has one. The score conditions are
    /// `account_scores`' generated columns (migration 0014), each with a partial index.
    fn condition(self) -> &'static str {
        match self {
            List::DealReady => "s.deal_readiness > $1",
            List::Pql => "s.pql >= $1",
            List::NearLimit => "$1 >= 0 AND s.near_limit",
            List::PowerUsers => "$1 >= 0 AND s.power_user",
            List::Escalations => "$1 >= 0 AND s.escalation",
            List::Flagged => "$1 >= 0 AND a.review_state IN ('suspected', 'auto_denied')",
        }
    }

    fn threshold(self, t: Thresholds) -> i32 {
        match self {
            List::DealReady => t.deal_ready_above as i32,
            List::Pql => t.pql_qualified_at as i32,
            _ => 0,
        }
    }

    fn default_sort(self) -> Sort {
        match self {
            List::DealReady | List::Escalations | List::PowerUsers => Sort::Deal,
            List::Pql | List::NearLimit => Sort::Pql,
            List::Flagged => Sort::Abuse,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Deal,
    Pql,
    Abuse,
    Account,
    Scored,
}

impl Sort {
    fn parse(s: &str) -> Result<Sort> {
        Ok(match s {
            "deal" => Sort::Deal,
            "pql" => Sort::Pql,
            "abuse" => Sort::Abuse,
            "account" => Sort::Account,
            "scored" => Sort::Scored,
            _ => {
                return Err(ConsoleError::BadRequest(format!(
                    "sort: {s:?} is not one of deal, pql, abuse, account, scored"
                )))
            }
        })
    }

    fn slug(self) -> &'static str {
        match self {
            Sort::Deal => "deal",
            Sort::Pql => "pql",
            Sort::Abuse => "abuse",
            Sort::Account => "account",
            Sort::Scored => "scored",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Sort::Deal => "s.deal_readiness",
            Sort::Pql => "s.pql",
            Sort::Abuse => "s.abuse",
            Sort::Account => "account_id",
            Sort::Scored => "s.scored_at",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub plan: Option<String>,
    pub sort: Option<String>,
    pub dir: Option<String>,
    pub page: Option<String>,
}

/// A checked request for one page of a list.
#[derive(Debug, Clone)]
pub struct Request {
    pub list: List,
    pub plan: Option<String>,
    pub sort: Sort,
    pub ascending: bool,
    pub page: u32,
}

impl Request {
    pub fn parse(list: &str, q: &ListQuery) -> Result<Request> {
        let list = List::parse(list)?;
        let plan = match q.plan.as_deref().filter(|p| !p.is_empty()) {
            None => None,
            Some(p @ ("free" | "pro" | "enterprise")) => Some(p.to_owned()),
            Some(p) => {
                return Err(ConsoleError::BadRequest(format!(
                    "plan: {p:?} is not one of free, pro, enterprise"
                )))
            }
        };
        let sort = match q.sort.as_deref().filter(|s| !s.is_empty()) {
            None => list.default_sort(),
            Some(s) => Sort::parse(s)?,
        };
        let ascending = match q.dir.as_deref().filter(|s| !s.is_empty()) {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(d) => {
                return Err(ConsoleError::BadRequest(format!(
                    "dir: {d:?} is not asc or desc"
                )))
            }
        };
        let page = match q.page.as_deref().filter(|s| !s.is_empty()) {
            None => 1,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=1_000_000).contains(p))
                .ok_or_else(|| {
                    ConsoleError::BadRequest(format!("page: {p:?} is not a page number"))
                })?,
        };
        Ok(Request {
            list,
            plan,
            sort,
            ascending,
            page,
        })
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Row {
    pub account_id: String,
    pub plan: String,
    pub email_domain: Option<String>,
    pub deal_readiness: Option<i32>,
    pub pql: Option<i32>,
    pub abuse: Option<i32>,
    pub review_state: Option<String>,
    pub scored_at: Option<DateTime<Utc>>,
}

/// The score lists start from the scorer's table, the review list from the accounts; the other
/// side is joined for what the rows show. Without a plan filter the count reads nothing but
/// the list's own index (PostgreSQL drops a left join on a primary key nothing uses).
fn from(list: List) -> &'static str {
    match list {
        List::Flagged => "FROM accounts a LEFT JOIN account_scores s USING (account_id)",
        _ => "FROM account_scores s LEFT JOIN accounts a USING (account_id)",
    }
}

/// The list's condition, and the plan filter (`$2`) when there is one.
fn condition(req: &Request) -> String {
    match req.plan {
        Some(_) => format!("{} AND a.plan = $2", req.list.condition()),
        None => req.list.condition().to_owned(),
    }
}

/// How many accounts `req.list` holds (with its plan filter).
pub async fn count(pool: &PgPool, thresholds: Thresholds, req: &Request) -> Result<i64> {
    let sql = format!(
        "SELECT count(*) {} WHERE {}",
        from(req.list),
        condition(req)
    );
    let mut q = sqlx::query_scalar(&sql).bind(req.list.threshold(thresholds));
    if let Some(plan) = &req.plan {
        q = q.bind(plan);
    }
    Ok(q.fetch_one(pool).await?)
}

/// One page of `req.list` (`limit` rows, or every row when `limit` is `None`), and the count.
pub async fn fetch(
    pool: &PgPool,
    thresholds: Thresholds,
    req: &Request,
    limit: Option<u32>,
) -> Result<(Vec<Row>, i64)> {
    let dir = if req.ascending {
        "ASC NULLS FIRST"
    } else {
        "DESC NULLS LAST"
    };
    let limit = limit.map_or(i64::MAX, i64::from);
    let offset = (i64::from(req.page) - 1) * limit.min(1_000_000);
    let next = if req.plan.is_some() { 3 } else { 2 };
    let sql = format!(
        "SELECT account_id, COALESCE(a.plan, '') AS plan, a.email_domain, s.deal_readiness, s.pql, s.abuse, a.review_state, s.scored_at \
         {} WHERE {} ORDER BY {} {dir}, account_id LIMIT ${next} OFFSET ${}",
        from(req.list),
        condition(req),
        req.sort.column(),
        next + 1
    );
    let mut q = sqlx::query_as(&sql).bind(req.list.threshold(thresholds));
    if let Some(plan) = &req.plan {
        q = q.bind(plan);
    }
    let rows = q.bind(limit).bind(offset).fetch_all(pool);
    let (rows, total) = tokio::join!(rows, count(pool, thresholds, req));
    Ok((rows?, total?))
}

#[derive(Debug, Serialize)]
struct Column {
    slug: &'static str,
    label: &'static str,
    /// The direction a click on the heading sorts by.
    next_dir: &'static str,
    /// `ascending` / `descending` when the list is sorted by it (aria-sort).
    sorted: Option<&'static str>,
}

/// `GET /console/lists/{list}`.
pub async fn page(
    State(state): State<ConsoleState>,
    session: Session,
    Path(list): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Page> {
    let req = Request::parse(&list, &q)?;
    let size = state.config.page_size;
    let (rows, total) = fetch(&state.pool, state.thresholds, &req, Some(size)).await?;
    let pages = ((total.max(1) as u64).div_ceil(u64::from(size))) as u32;
    let columns: Vec<Column> = [
        (Sort::Account, "Account"),
        (Sort::Deal, "Deal readiness"),
        (Sort::Pql, "PQL"),
        (Sort::Abuse, "Abuse"),
        (Sort::Scored, "Scored"),
    ]
    .into_iter()
    .map(|(s, label)| {
        let current = s == req.sort;
        Column {
            slug: s.slug(),
            label,
            next_dir: if current && !req.ascending {
                "asc"
            } else {
                "desc"
            },
            sorted: current.then_some(if req.ascending {
                "ascending"
            } else {
                "descending"
            }),
        }
    })
    .collect();
    let rows: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let scored = r.scored_at.map(when).unwrap_or_default();
            let show = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_default();
            let (deal, pql, abuse) = (show(r.deal_readiness), show(r.pql), show(r.abuse));
            context! { r, scored, deal, pql, abuse }
        })
        .collect();
    render(
        "list.html",
        context! {
            session,
            title => req.list.title(),
            slug => req.list.slug(),
            lists => List::ALL.iter().map(|l| context!{ slug => l.slug(), title => l.title() }).collect::<Vec<_>>(),
            plan => req.plan,
            sort => req.sort.slug(),
            dir => if req.ascending { "asc" } else { "desc" },
            page => req.page,
            pages,
            total,
            rows,
            columns,
        },
    )
}

/// `GET /console/lists/{list}/csv`: every row of the list (filter and sort as on the page).
pub async fn csv(
    State(state): State<ConsoleState>,
    _session: Session,
    Path(list): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    let req = Request {
        page: 1,
        ..Request::parse(&list, &q)?
    };
    let (rows, _) = fetch(&state.pool, state.thresholds, &req, None).await?;
    let mut out = csv::Writer::from_writer(Vec::new());
    let fail = |e: csv::Error| ConsoleError::Internal(format!("csv: {e}"));
    out.write_record([
        "account_id",
        "plan",
        "email_domain",
        "deal_readiness",
        "pql",
        "abuse",
        "review_state",
        "scored_at",
    ])
    .map_err(fail)?;
    let opt = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_default();
    for r in rows {
        out.write_record([
            // A cell starting with = + - @ would be a formula to a spreadsheet: prefix it.
            defuse(&r.account_id),
            r.plan,
            defuse(r.email_domain.as_deref().unwrap_or("")),
            opt(r.deal_readiness),
            opt(r.pql),
            opt(r.abuse),
            r.review_state.unwrap_or_default(),
            r.scored_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        ])
        .map_err(fail)?;
    }
    let body = out
        .into_inner()
        .map_err(|e| ConsoleError::Internal(format!("csv: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.csv\"", req.list.slug()),
            ),
        ],
        body,
    )
        .into_response())
}

/// Spreadsheets run a cell that starts with `=`, `+`, `-` or `@`; a leading `'` keeps it text.
fn defuse(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_the_bad_field() {
        let q = |plan: &str, sort: &str, dir: &str, page: &str| ListQuery {
            plan: Some(plan.into()),
            sort: Some(sort.into()),
            dir: Some(dir.into()),
            page: Some(page.into()),
        };
        let err = |q: ListQuery| Request::parse("pql", &q).unwrap_err().to_string();
        assert!(err(q("gold", "", "", "")).starts_with("plan:"));
        assert!(err(q("", "evil;drop", "", "")).starts_with("sort:"));
        assert!(err(q("", "", "up", "")).starts_with("dir:"));
        assert!(err(q("", "", "", "0")).starts_with("page:"));
        let ok = Request::parse("flagged", &q("free", "", "asc", "3")).unwrap();
        assert_eq!((ok.sort, ok.ascending, ok.page), (Sort::Abuse, true, 3));
        assert!(Request::parse("nope", &ListQuery::default()).is_err());
    }

    #[test]
    fn formulas_are_defused() {
        assert_eq!(defuse("=cmd()"), "'=cmd()");
        assert_eq!(defuse("acme.com"), "acme.com");
    }
}

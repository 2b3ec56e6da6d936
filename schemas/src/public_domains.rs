//! Public email domains: the ones anybody can sign up with (`gmail.com`, `outlook.com`, …).
//! An account on one says nothing about its company, so they are left out of the email-domain
//! rollup, the PQL's domain points and HubSpot companies.
//!
//! The list is configuration (`[accounts] public_domains`, plus an optional file of one domain
//! per line, `#` for comments); [`DEFAULT_PUBLIC_DOMAINS`] is the default.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Webmail and consumer ISP domains that together hold most consumer signups.
pub const DEFAULT_PUBLIC_DOMAINS: [&str; 40] = [
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "hotmail.co.uk",
    "live.com",
    "msn.com",
    "yahoo.com",
    "yahoo.co.uk",
    "yahoo.co.jp",
    "ymail.com",
    "aol.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "proton.me",
    "protonmail.com",
    "pm.me",
    "tutanota.com",
    "zoho.com",
    "gmx.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "t-online.de",
    "mail.com",
    "mail.ru",
    "yandex.ru",
    "yandex.com",
    "qq.com",
    "163.com",
    "126.com",
    "sina.com",
    "naver.com",
    "daum.net",
    "free.fr",
    "orange.fr",
    "laposte.net",
    "libero.it",
    "fastmail.com",
];

/// `[accounts]` public-domain settings, as configured.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublicDomainsConfig {
    /// Public email domains (lower case, the part after `@`).
    pub public_domains: Vec<String>,
    /// A file with more of them, one per line; `#` starts a comment.
    pub public_domains_file: Option<String>,
}

impl Default for PublicDomainsConfig {
    fn default() -> Self {
        Self {
            public_domains: DEFAULT_PUBLIC_DOMAINS.iter().map(|d| (*d).into()).collect(),
            public_domains_file: None,
        }
    }
}

/// The public-domain file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("accounts.public_domains_file {path:?}: {source}")]
pub struct PublicDomainsFileError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// The resolved set of public email domains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicDomains(BTreeSet<String>);

impl PublicDomains {
    /// The configured list plus the file's lines.
    pub fn load(c: &PublicDomainsConfig) -> Result<Self, PublicDomainsFileError> {
        let mut set: BTreeSet<String> = c.public_domains.iter().map(|d| normalise(d)).collect();
        if let Some(path) = &c.public_domains_file {
            let text = std::fs::read_to_string(path).map_err(|source| PublicDomainsFileError {
                path: path.clone(),
                source,
            })?;
            set.extend(parse_list(&text));
        }
        set.remove("");
        Ok(Self(set))
    }

    pub fn from_list<I: IntoIterator<Item = S>, S: AsRef<str>>(domains: I) -> Self {
        Self(domains.into_iter().map(|d| normalise(d.as_ref())).collect())
    }

    /// Whether `domain` (any case) is public.
    pub fn is_public(&self, domain: &str) -> bool {
        self.0.contains(&normalise(domain))
    }

    /// `domain` when it names a company, `None` for a public one.
    pub fn company_domain<'a>(&self, domain: Option<&'a str>) -> Option<&'a str> {
        domain.filter(|d| !self.is_public(d))
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn normalise(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn parse_list(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .map(normalise)
        .filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_public_and_companies_are_not() {
        let p = PublicDomains::load(&PublicDomainsConfig::default()).unwrap();
        assert!(p.is_public("gmail.com"));
        assert!(p.is_public("GMail.COM"));
        assert!(!p.is_public("acme.io"));
        assert_eq!(p.company_domain(Some("gmail.com")), None);
        assert_eq!(p.company_domain(Some("acme.io")), Some("acme.io"));
        assert_eq!(p.company_domain(None), None);
    }

    #[test]
    fn the_file_adds_domains_and_skips_comments() {
        let dir = std::env::temp_dir().join(format!("public-domains-{}", std::process::id()));
        std::fs::write(
            &dir,
            "# campus mail\nstudent.example.edu  # every student\n\nMAIL.Example.\n",
        )
        .unwrap();
        let c = PublicDomainsConfig {
            public_domains: vec!["gmail.com".into()],
            public_domains_file: Some(dir.display().to_string()),
        };
        let p = PublicDomains::load(&c).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            p.iter().collect::<Vec<_>>(),
            vec!["gmail.com", "mail.example", "student.example.edu"]
        );
        let missing = PublicDomainsConfig {
            public_domains_file: Some("/nonexistent/domains.txt".into()),
            ..Default::default()
        };
        let e = PublicDomains::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with("accounts.public_domains_file \"/nonexistent/domains.txt\""),
            "{e}"
        );
    }
}

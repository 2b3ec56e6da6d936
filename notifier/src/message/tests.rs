use super::*;

fn deal_signal() -> AccountSignal {
    AccountSignal {
        signal_id: "acme-1:deal_ready:202611:75".into(),
        kind: SignalKind::DealReady,
        account_id: "acme-1".into(),
        episode: "202611:75".into(),
        raised_at: 1_795_000_000_000_000,
        plan: "free".into(),
        deal_readiness: 75,
        pql: 40,
        abuse: 0,
        reasons: vec![
            "monthly_tokens (+30): 61234567 tokens this month (over 50000000)".into(),
            "regions (+20): 3 regions (over 2)".into(),
            "plugins_desired (+25): audit_logger, guardrails".into(),
        ],
        evidence: json!({"inputs": {"monthly_tokens": 61_234_567u64, "regions": ["eu-west-1", "us-east-1", "ap-south-1"], "team_size": 4}}).to_string(),
    }
}

#[test]
fn the_brief_talking_point_comes_first() {
    let c = NotifierConfig::default();
    let usage = UsageSummary {
        tokens_last_7d: 150,
        tokens_prior_7d: 100,
        ..Default::default()
    };
    let points = talking_points(
        &deal_signal(),
        &AccountInfo::default(),
        &usage,
        Some(&c.offers.enterprise),
    );
    assert_eq!(points.len(), 3);
    assert_eq!(points[0], "Running across 3 regions with 61.2M+ monthly tokens: Enterprise includes multi-cloud routing.");
    assert!(points[1].contains("audit_logger, guardrails"), "{points:?}");
    assert_eq!(points[2], "Usage is up 50 % week over week.");
}

#[test]
fn a_deal_alert_carries_account_plan_score_reasons_usage_offer_and_points() {
    let c = NotifierConfig::default();
    let usage = UsageSummary {
        requests: 12_345,
        tokens: 61_234_567,
        models: 4,
        regions: 3,
        tokens_last_7d: 120,
        tokens_prior_7d: 100,
    };
    let account = AccountInfo {
        seats: Some(4),
        email_domain: Some("acme.com".into()),
        ..Default::default()
    };
    let aim = Aim::new(&c, Plan::Free, Some(Plan::Enterprise), false);
    let m = slack_message(&deal_signal(), &account, &usage, &aim);
    let text = m.to_string();
    assert_eq!(m["blocks"][0]["type"], "header");
    assert_eq!(m["blocks"][0]["text"]["text"], "Deal ready: acme-1");
    for needle in [
        "*Account*\\nacme-1",
        "*Plan*\\nfree",
        "*Deal readiness*\\n75/100",
        "Enterprise: from $2,000",
        "monthly_tokens (+30)",
        "12.3k requests · 61.2M tokens · 4 models · 3 regions · +20 % week over week",
        "*Talking points*",
        "acme.com",
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    assert!(m["text"]
        .as_str()
        .unwrap()
        .starts_with("Deal ready — acme-1"));
}

#[test]
fn trust_and_safety_alerts_recommend_nothing() {
    let c = NotifierConfig::default();
    let mut s = deal_signal();
    s.kind = SignalKind::KeySharing;
    s.abuse = 60;
    let aim = Aim::new(&c, Plan::Free, None, false);
    let m = slack_message(&s, &AccountInfo::default(), &UsageSummary::default(), &aim).to_string();
    assert!(m.contains("*Abuse score*\\n60/100"));
    assert!(!m.contains("Recommended"));
    assert!(!m.contains("Talking points"));
}

#[test]
fn event_text_is_escaped_for_mrkdwn() {
    assert_eq!(escape("<!channel> & co"), "&lt;!channel&gt; &amp; co");
}

#[test]
fn notices_name_the_offered_plan_and_its_price() {
    let c = NotifierConfig::default();
    let mut s = deal_signal();
    s.kind = SignalKind::RateLimitSustained;
    let n = notice(&c, &s, Plan::Pro, &c.offers.pro);
    assert_eq!(n.plan, "pro");
    assert!(
        n.message.contains(
            "Upgrading to Pro (1,000 requests/minute and 15 models; $49 per seat per month)"
        ),
        "{}",
        n.message
    );
    assert!(n.upgrade_url.ends_with("plan=pro"));
    s.kind = SignalKind::PluginGate;
    s.evidence = json!({"plugin": "guardrails", "message": "Guardrails blocks PII before it reaches a model."}).to_string();
    let n = notice(&c, &s, Plan::Enterprise, &c.offers.enterprise);
    assert_eq!(n.plan, "enterprise");
    assert!(
        n.message.starts_with(
            "Guardrails blocks PII before it reaches a model. Enterprise includes it, with unlimited requests"
        ) && n.message.ends_with("(from $2,000 per month (annual))."),
        "{}",
        n.message
    );
}

#[test]
fn an_escalation_lists_its_tags_and_an_expansion_sells_nothing() {
    let c = NotifierConfig::default();
    let mut s = deal_signal();
    s.kind = SignalKind::Escalation;
    s.deal_readiness = 40;
    s.reasons = vec!["escalation: 3_plus_regions".into()];
    s.evidence = json!({"tags": ["over_50000000_tokens_this_month", "3_plus_regions"]}).to_string();
    let aim = Aim::new(&c, Plan::Free, Some(Plan::Enterprise), false);
    let m = slack_message(&s, &AccountInfo::default(), &UsageSummary::default(), &aim);
    let types: Vec<&str> = m["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["header", "section", "section", "section", "context"]
    );
    assert_eq!(m["blocks"][0]["text"]["text"], "Escalation: acme-1");
    assert_eq!(
        m["blocks"][2]["text"]["text"],
        "*Escalation tags*\n• `over_50000000_tokens_this_month`\n• `3_plus_regions`"
    );
    let text = m.to_string();
    assert!(text.contains("*Deal readiness*\\n40/100"), "{text}");
    assert!(text.contains("*Recommended*\\nEnterprise"), "{text}");
    // Tags from the reasons when the evidence has none.
    s.evidence = "{}".into();
    assert_eq!(escalation_tags(&s), ["3_plus_regions"]);

    // The same growth from an Enterprise customer: for account management, no pitch.
    s.plan = "enterprise".into();
    let aim = Aim::new(&c, Plan::Enterprise, None, true);
    let m = slack_message(&s, &AccountInfo::default(), &UsageSummary::default(), &aim);
    assert_eq!(
        m["blocks"][0]["text"]["text"],
        "Customer growth (escalation): acme-1"
    );
    let text = m.to_string();
    assert!(!text.contains("Recommended"), "{text}");
    assert!(!text.contains("includes"), "{text}");
    assert!(
        text.contains("An existing enterprise customer: for account management, not a new deal"),
        "{text}"
    );
}

#[test]
fn a_public_domain_deal_has_no_company_and_says_why() {
    let c = NotifierConfig::default();
    let public = PublicDomains::from_list(["gmail.com"]);
    let usage = UsageSummary::default();
    let at = |domain: &str| AccountInfo {
        email_domain: Some(domain.into()),
        ..Default::default()
    };
    let d = deal_request(
        &deal_signal(),
        &at("GMail.com"),
        &usage,
        Plan::Free,
        &c.offers.enterprise,
        &public,
    );
    assert_eq!(d.email_domain, None);
    assert_eq!(d.deal_name, "acme-1 — Enterprise");
    let why = d.no_company.as_deref().unwrap();
    assert!(why.contains("GMail.com is a public email domain"), "{why}");
    assert!(d.description.contains(why), "{}", d.description);
    let d = deal_request(
        &deal_signal(),
        &at("acme.io"),
        &usage,
        Plan::Free,
        &c.offers.enterprise,
        &public,
    );
    assert_eq!(d.email_domain.as_deref(), Some("acme.io"));
    assert_eq!(d.deal_name, "acme.io — Enterprise (acme-1)");
    assert_eq!(d.no_company, None);
    // Payloads queued before the field existed still read.
    let old = json!({"account_id": "a", "email_domain": "acme.io", "deal_name": "n", "score": 75, "description": "d"});
    assert_eq!(
        serde_json::from_value::<DealRequest>(old)
            .unwrap()
            .no_company,
        None
    );
}

#[test]
fn counts_read_like_people_write_them() {
    assert_eq!(count(999), "999");
    assert_eq!(count(12_345), "12.3k");
    assert_eq!(count(61_234_567), "61.2M");
    assert_eq!(count(2_500_000_000), "2.5B");
}

#[test]
fn the_console_link_encodes_the_account_and_sits_before_the_context() {
    assert_eq!(
        console_link("https://c.example.com/console/", "acct 1/<b>"),
        "https://c.example.com/console/accounts/acct%201%2F%3Cb%3E"
    );
    let mut m = json!({"text": "t", "blocks": [{"type": "header"}, {"type": "context"}]});
    add_console_button(&mut m, "https://c.example.com/console/accounts/a");
    assert_eq!(m["blocks"][1]["type"], "actions");
    assert_eq!(
        m["blocks"][1]["elements"][0]["url"],
        "https://c.example.com/console/accounts/a"
    );
    assert_eq!(m["blocks"][2]["type"], "context");
}

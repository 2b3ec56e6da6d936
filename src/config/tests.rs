//! Loading, overriding and validating the configuration.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_match_the_local_services() {
    let c = Config::load(None, env(&[])).unwrap();
    assert_eq!(c.http.listen, "127.0.0.1:8080");
    assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(c.clickhouse.url, "http://127.0.0.1:8123");
    assert_eq!(c.clickhouse.database, "meterline");
    assert_eq!(c.redis.url, "redis://127.0.0.1:6379");
    assert!(c.postgres.url.ends_with("127.0.0.1:5432/meterline"));
}

/// Every key path in a table, with its value; free-form maps count as their entries.
fn flatten(
    prefix: &str,
    t: &toml::Table,
    out: &mut std::collections::BTreeMap<String, toml::Value>,
) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            v => {
                out.insert(key, v.clone());
            }
        }
    }
}

#[test]
fn the_example_file_lists_exactly_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("meterline.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut example = std::collections::BTreeMap::new();
    flatten("", &toml::from_str(&text).unwrap(), &mut example);
    let mut defaults = std::collections::BTreeMap::new();
    flatten(
        "",
        &toml::Table::try_from(Config::default()).unwrap(),
        &mut defaults,
    );
    let missing: Vec<_> = defaults
        .keys()
        .filter(|k| !example.contains_key(*k))
        .collect();
    let extra: Vec<_> = example
        .keys()
        .filter(|k| !defaults.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from the example: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "keys in the example that are not defaults: {extra:?}"
    );
    for (k, v) in &defaults {
        // Integers written for float keys are the same number.
        let same = match (v, &example[k]) {
            (toml::Value::Float(a), toml::Value::Integer(b)) => *a == *b as f64,
            (a, b) => a == b,
        };
        assert!(same, "{k}: example has {}, default is {v}", example[k]);
    }
}

#[test]
fn env_overrides_the_file_with_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[kafka]\nbrokers = \"file:1\"\npartitions = 3\n").unwrap();
    let c = Config::load(
        Some(&path),
        env(&[
            ("METERLINE_KAFKA__PARTITIONS", "12"),
            ("METERLINE_CLICKHOUSE__PASSWORD", "123"),
            ("METERLINE_KAFKA__PROPERTIES__SECURITY.PROTOCOL", "SASL_SSL"),
            ("OTHER", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.kafka.brokers, "file:1");
    assert_eq!(c.kafka.partitions, 12);
    assert_eq!(c.clickhouse.password, "123");
    assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
}

#[test]
fn one_tier_key_changes_without_restating_the_tier() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[tiers.free.limits]\nmonth_weighted_tokens = 9000\n").unwrap();
    let c = Config::load(
        Some(&path),
        env(&[("METERLINE_TIERS__FREE__REQUESTS_PER_MINUTE", "250")]),
    )
    .unwrap();
    assert_eq!(c.tiers.free.limits["month_weighted_tokens"], 9000.0);
    assert_eq!(c.tiers.free.limits["day_requests"], 5000.0);
    assert_eq!(c.tiers.free.requests_per_minute, 250.0);
    assert_eq!(c.tiers.free.fallback_model, "gpt-4o-mini");
}

/// What a parent process passes a child: the child, loading the same file with the
/// variables on top, has the parent's configuration, for every kind of value.
#[test]
fn env_changes_give_a_child_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[kafka]\npartitions = 3\n").unwrap();
    let base = Config::load(Some(&path), env(&[])).unwrap();
    let mut c = base.clone();
    c.kafka.usage_topic = "run-usage".into();
    c.kafka.partitions = 6;
    c.kafka
        .properties
        .insert("security.protocol".into(), "SASL_SSL".into());
    c.tiers.free.weight_multiplier = 0.75;
    c.tiers.free.limits.insert("day_requests".into(), 1234.5);
    c.aggregator.instance_id = String::new();

    let changes = c.env_changes(&base).unwrap();
    assert_eq!(changes.len(), 6, "one per changed key: {changes:?}");
    assert!(changes.contains(&(
        "METERLINE_TIERS__FREE__WEIGHT_MULTIPLIER".into(),
        "0.75".into()
    )));
    let child = Config::load(Some(&path), changes).unwrap();
    let as_toml = |c: &Config| toml::Table::try_from(c).unwrap();
    assert_eq!(as_toml(&child), as_toml(&c));
    assert!(base.env_changes(&base).unwrap().is_empty());

    let mut listed = base.clone();
    listed.tiers.free.allowed_models.push("another".into());
    let err = listed.env_changes(&base).unwrap_err().to_string();
    assert!(err.contains("`tiers.free.allowed_models`"), "{err}");
}

#[test]
fn bad_values_name_the_key() {
    let err = Config::load(None, env(&[("METERLINE_INGEST__MAX_EVENTS", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`ingest.max_events`") && err.contains("not an integer"),
        "{err}"
    );
    let err = Config::load(None, env(&[("METERLINE_KAFKA__BROKER", "x")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`kafka.broker`") && err.contains("unknown key"),
        "{err}"
    );
    let err = Config::load(None, env(&[("METERLINE_KAFKA__PARTITIONS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`kafka.partitions`: must be at least 1"),
        "{err}"
    );
    let err = Config::load(
        None,
        env(&[("METERLINE_AGGREGATOR__CLICKHOUSE_BACKLOG_EVENTS", "0")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`aggregator.clickhouse_backlog_events`: must be at least 1"),
        "{err}"
    );
    let c = Config::load(
        None,
        env(&[("METERLINE_AGGREGATOR__CLICKHOUSE_BACKLOG_EVENTS", "600000")]),
    )
    .unwrap();
    assert_eq!(c.aggregator.clickhouse_backlog_events, 600_000);
    let err = Config::load(None, env(&[("METERLINE_HTTP__LISTEN", "nowhere")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`http.listen`"), "{err}");
    let err = Config::load(
        None,
        env(&[(
            "METERLINE_REDIS__CLUSTER_NODES",
            "redis://127.0.0.1:7000, 127.0.0.1:7001",
        )]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`redis.cluster_nodes`")
            && err.contains("\"127.0.0.1:7001\" is not a redis://"),
        "{err}"
    );
    let cluster = Config::load(
        None,
        env(&[(
            "METERLINE_REDIS__CLUSTER_NODES",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        )]),
    )
    .unwrap();
    assert_eq!(cluster.redis.cluster_node_list().len(), 2);
    let err = Config::load(None, env(&[("METERLINE_REDIS__KEY_PREFIX", "ml{x}:")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`redis.key_prefix`") && err.contains("brace"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[redis]\nkey_prefx = \"a\"\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(err.contains("redis") && err.contains("key_prefx"), "{err}");
    std::fs::write(&path, "[tiers.free.limits]\nday_requests = -3\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("`tiers.free.limits.day_requests`") && err.contains("negative"),
        "{err}"
    );
    std::fs::write(&path, "[tiers.pro.limits]\nweek_requests = 3\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(err.contains("`tiers.pro.limits.week_requests`"), "{err}");
    std::fs::write(&path, "[quota]\nstages = [85, 70, 95, 100]\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(err.contains("`quota.stages`"), "{err}");
    std::fs::write(&path, "[tiers.free]\nfallback_model = \"gpt-4o\"\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("`tiers.free.fallback_model`") && err.contains("allowed_models"),
        "{err}"
    );
    std::fs::write(&path, "[tiers.free]\nrequests_per_mnute = 5\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(err.contains("requests_per_mnute"), "{err}");
    std::fs::write(&path, "[aggregator]\nbatch_max_events = \"many\"\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(err.contains("`aggregator.batch_max_events`"), "{err}");
    std::fs::write(&path, "[notifier.routes]\ndeal = [\"notice\"]\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("`notifier.routes") && err.contains("\"deal\" is not a signal kind"),
        "{err}"
    );
}

#[test]
fn scorer_plan_scopes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[scorer.abuse]\nplans = [\"gold\"]\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("`scorer.abuse.plans") && err.contains("gold"),
        "{err}"
    );
    std::fs::write(&path, "[scorer]\npower_plans = [\"pro\", \"pro\"]\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("`scorer.power_plans`: names a plan twice"),
        "{err}"
    );
    std::fs::write(&path, "[scorer]\npower_spend_top_share = 0.0\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(err.contains("`scorer.power_spend_top_share`"), "{err}");
    std::fs::write(&path, "[scorer.pql]\nplans = [\"free\"]\n").unwrap();
    let c = Config::load(Some(&path), env(&[])).unwrap();
    assert_eq!(c.scorer.pql.plans, vec![meterline_schemas::Plan::Free]);
}

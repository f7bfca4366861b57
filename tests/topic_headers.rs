//! Topic (`*`, `#`) and headers (all / any / all-with-x / any-with-x) routing.

mod common;

use common::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};

/// Binds one queue per pattern to a fresh topic exchange, publishes each key,
/// and returns, for each pattern, the keys it received (in publish order).
async fn topic_matches(ch: &Channel, patterns: &[&str], keys: &[&str]) -> Vec<Vec<String>> {
    let x = temp_exchange(ch, ExchangeKind::Topic).await;
    let mut queues = Vec::new();
    for p in patterns {
        let q = temp_queue(ch).await;
        bind(ch, &q, &x, p).await;
        queues.push(q);
    }
    for k in keys {
        publish_confirmed(ch, &x, k, k.as_bytes()).await;
    }
    let mut out = Vec::new();
    for q in &queues {
        let got = drain(ch, q).await;
        out.push(
            got.into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect(),
        );
    }
    let _ = ch
        .exchange_delete(
            x.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await;
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn topic_star_matches_exactly_one_word() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = topic_matches(
        &ch,
        &["*.orange.*", "*"],
        &[
            "quick.orange.rabbit",
            "orange",
            "quick.orange",
            "a.orange.b.c",
            "..",
            "x",
        ],
    )
    .await;
    assert_eq!(got[0], strings(&["quick.orange.rabbit"]));
    assert_eq!(got[1], strings(&["orange", "x"]));
    broker.shutdown().await;
}

/// "a..b" has an empty middle word, which `*` matches; the empty routing key
/// has no words at all, so `*` does not match it (but `#` does).
#[tokio::test]
async fn topic_star_matches_an_empty_word_but_not_an_empty_key() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = topic_matches(&ch, &["a.*.b", "*"], &["a..b", "", "a.b"]).await;
    assert_eq!(got[0], strings(&["a..b"]));
    assert!(got[1].is_empty(), "{:?}", got[1]);
    broker.shutdown().await;
}

#[tokio::test]
async fn topic_hash_matches_zero_or_more_words() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = topic_matches(
        &ch,
        &["lazy.#", "#.end", "a.#.b", "#"],
        &[
            "lazy",
            "lazy.orange",
            "lazy.a.b.c",
            "end",
            "x.y.end",
            "a.b",
            "a.x.y.b",
            "ab",
            "",
        ],
    )
    .await;
    assert_eq!(got[0], strings(&["lazy", "lazy.orange", "lazy.a.b.c"]));
    assert_eq!(got[1], strings(&["end", "x.y.end"]));
    assert_eq!(got[2], strings(&["a.b", "a.x.y.b"]));
    assert_eq!(
        got[3],
        strings(&[
            "lazy",
            "lazy.orange",
            "lazy.a.b.c",
            "end",
            "x.y.end",
            "a.b",
            "a.x.y.b",
            "ab",
            ""
        ])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn topic_mixed_wildcards() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = topic_matches(
        &ch,
        &["*.#", "#.*", "*.*.#", "#.#", "a.*.#.z"],
        &["a", "a.b", "a.b.c", "a.q.z", "a.z", "a.q.r.s.z"],
    )
    .await;
    assert_eq!(
        got[0],
        strings(&["a", "a.b", "a.b.c", "a.q.z", "a.z", "a.q.r.s.z"])
    );
    assert_eq!(
        got[1],
        strings(&["a", "a.b", "a.b.c", "a.q.z", "a.z", "a.q.r.s.z"])
    );
    assert_eq!(
        got[2],
        strings(&["a.b", "a.b.c", "a.q.z", "a.z", "a.q.r.s.z"])
    );
    assert_eq!(
        got[3],
        strings(&["a", "a.b", "a.b.c", "a.q.z", "a.z", "a.q.r.s.z"])
    );
    assert_eq!(got[4], strings(&["a.q.z", "a.q.r.s.z"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn topic_without_wildcards_matches_exactly_and_case_sensitively() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = topic_matches(
        &ch,
        &["stock.usd.nyse"],
        &["stock.usd.nyse", "Stock.usd.nyse", "stock.usd"],
    )
    .await;
    assert_eq!(got[0], strings(&["stock.usd.nyse"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn amq_topic_routes_with_wildcards() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let prefix = unique("t").replace('.', "_");
    bind(&ch, &q, "amq.topic", &format!("{prefix}.#")).await;
    publish_confirmed(&ch, "amq.topic", &format!("{prefix}.a.b"), b"in").await;
    publish_confirmed(&ch, "amq.topic", &format!("other{prefix}.a"), b"out").await;
    assert_eq!(drain(&ch, &q).await, bodies(["in"]));
    broker.shutdown().await;
}

// ---- headers ----

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

fn i(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

/// Binds one queue with `binding` arguments to a fresh headers exchange, publishes
/// one message per header set (body = its index), returns the indices received.
async fn headers_matches(
    ch: &Channel,
    exchange: Option<&str>,
    binding: FieldTable,
    messages: Vec<FieldTable>,
) -> Vec<usize> {
    let x = match exchange {
        Some(x) => x.to_string(),
        None => temp_exchange(ch, ExchangeKind::Headers).await,
    };
    let q = temp_queue(ch).await;
    bind_args(ch, &q, &x, "", binding).await;
    for (n, headers) in messages.into_iter().enumerate() {
        let props = BasicProperties::default().with_headers(headers);
        publish_confirmed_props(ch, &x, "ignored", n.to_string().as_bytes(), props).await;
    }
    if exchange.is_none() {
        let _ = ch
            .exchange_delete(
                x.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    drain(ch, &q)
        .await
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn headers_all_requires_every_binding_header() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
        vec![
            table(&[("format", s("pdf")), ("type", s("report"))]),
            table(&[("format", s("pdf")), ("type", s("report")), ("extra", i(1))]),
            table(&[("format", s("pdf"))]),
            table(&[("format", s("pdf")), ("type", s("log"))]),
            table(&[]),
        ],
    )
    .await;
    assert_eq!(got, vec![0, 1]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_default_match_is_all() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[("a", i(1)), ("b", i(2))]),
        vec![table(&[("a", i(1))]), table(&[("a", i(1)), ("b", i(2))])],
    )
    .await;
    assert_eq!(got, vec![1]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_any_requires_one_binding_header() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
        vec![
            table(&[("format", s("pdf"))]),
            table(&[("type", s("report"))]),
            table(&[("format", s("zip")), ("type", s("log"))]),
            table(&[]),
        ],
    )
    .await;
    assert_eq!(got, vec![0, 1]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_values_must_have_the_same_type() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[("x-match", s("all")), ("n", i(1))]),
        vec![table(&[("n", s("1"))]), table(&[("n", i(1))])],
    )
    .await;
    assert_eq!(got, vec![1]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_all_ignores_x_prefixed_binding_headers() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[
            ("x-match", s("all")),
            ("x-tenant", s("acme")),
            ("kind", s("a")),
        ]),
        vec![
            table(&[("kind", s("a"))]),
            table(&[("kind", s("a")), ("x-tenant", s("other"))]),
        ],
    )
    .await;
    assert_eq!(got, vec![0, 1]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_all_with_x_requires_x_prefixed_headers_too() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[
            ("x-match", s("all-with-x")),
            ("x-tenant", s("acme")),
            ("kind", s("a")),
        ]),
        vec![
            table(&[("kind", s("a"))]),
            table(&[("kind", s("a")), ("x-tenant", s("other"))]),
            table(&[("kind", s("a")), ("x-tenant", s("acme"))]),
        ],
    )
    .await;
    assert_eq!(got, vec![2]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_any_ignores_x_prefixed_headers() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[
            ("x-match", s("any")),
            ("x-tenant", s("acme")),
            ("kind", s("a")),
        ]),
        vec![
            table(&[("x-tenant", s("acme"))]),
            table(&[("kind", s("a"))]),
        ],
    )
    .await;
    assert_eq!(got, vec![1]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_any_with_x_matches_on_x_prefixed_headers() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[
            ("x-match", s("any-with-x")),
            ("x-tenant", s("acme")),
            ("kind", s("a")),
        ]),
        vec![
            table(&[("x-tenant", s("acme"))]),
            table(&[("kind", s("a"))]),
            table(&[("x-tenant", s("other"))]),
        ],
    )
    .await;
    assert_eq!(got, vec![0, 1]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_void_binding_value_matches_key_presence() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[("x-match", s("all")), ("flag", AMQPValue::Void)]),
        vec![
            table(&[("flag", i(7))]),
            table(&[("other", i(7))]),
            table(&[("flag", s("yes"))]),
        ],
    )
    .await;
    assert_eq!(got, vec![0, 2]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_all_with_no_headers_matches_everything() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let got = headers_matches(
        &ch,
        None,
        table(&[("x-match", s("all"))]),
        vec![table(&[]), table(&[("a", i(1))])],
    )
    .await;
    assert_eq!(got, vec![0, 1]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_message_without_headers_matches_only_empty_all_bindings() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Headers).await;
    let q_all = temp_queue(&ch).await;
    let q_any = temp_queue(&ch).await;
    bind_args(&ch, &q_all, &x, "", table(&[("x-match", s("all"))])).await;
    bind_args(
        &ch,
        &q_any,
        &x,
        "",
        table(&[("x-match", s("any")), ("a", i(1))]),
    )
    .await;
    publish_confirmed(&ch, &x, "", b"no headers").await;
    assert_eq!(message_counts(&ch, &[q_all, q_any]).await, vec![1, 0]);
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn amq_match_is_a_headers_exchange() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let key = unique("k");
    let got = headers_matches(
        &ch,
        Some("amq.match"),
        table(&[("x-match", s("any")), (key.as_str(), s("v"))]),
        vec![
            table(&[(key.as_str(), s("v"))]),
            table(&[(key.as_str(), s("w"))]),
        ],
    )
    .await;
    assert_eq!(got, vec![0]);
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_binding_with_an_invalid_x_match_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Headers).await;
    let q = temp_queue(&ch).await;
    assert_amqp_error(
        ch.queue_bind(
            q.as_str().into(),
            x.as_str().into(),
            "".into(),
            lapin::options::QueueBindOptions::default(),
            table(&[("x-match", s("some"))]),
        ),
        406,
        "PRECONDITION_FAILED - Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x",
    )
    .await;
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn headers_unbind_matches_the_binding_arguments() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Headers).await;
    let q = temp_queue(&ch).await;
    let a = table(&[("x-match", s("any")), ("a", i(1))]);
    let b = table(&[("x-match", s("any")), ("b", i(1))]);
    bind_args(&ch, &q, &x, "", a.clone()).await;
    bind_args(&ch, &q, &x, "", b).await;
    ch.queue_unbind(q.as_str().into(), x.as_str().into(), "".into(), a)
        .await
        .unwrap();
    let props = |k: &str| BasicProperties::default().with_headers(table(&[(k, i(1))]));
    publish_confirmed_props(&ch, &x, "", b"a", props("a")).await;
    publish_confirmed_props(&ch, &x, "", b"b", props("b")).await;
    assert_eq!(drain(&ch, &q).await, bodies(["b"]));
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

/// The same headers matching, with amqprs encoding the binding arguments and the
/// message headers (an independent field-table codec).
#[tokio::test]
async fn amqprs_headers_binding_routes_by_headers() {
    use amqprs::channel::{BasicPublishArguments, ExchangeDeclareArguments, QueueBindArguments};
    use amqprs::{FieldTable, FieldValue};
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, _events) = amqprs_channel(&conn).await;
    let x = unique("ahx");
    ch.exchange_declare(ExchangeDeclareArguments::new(&x, "headers"))
        .await
        .unwrap();
    let q = amqprs_temp_queue(&ch).await;
    let mut args = FieldTable::new();
    args.insert(
        "x-match".try_into().unwrap(),
        FieldValue::S("all".try_into().unwrap()),
    );
    args.insert(
        "region".try_into().unwrap(),
        FieldValue::S("eu".try_into().unwrap()),
    );
    args.insert("level".try_into().unwrap(), FieldValue::I(3));
    ch.queue_bind(QueueBindArguments::new(&q, &x, "").arguments(args).finish())
        .await
        .unwrap();
    let send = |region: &str, level: i32, body: &str| {
        let mut h = FieldTable::new();
        h.insert(
            "region".try_into().unwrap(),
            FieldValue::S(region.try_into().unwrap()),
        );
        h.insert("level".try_into().unwrap(), FieldValue::I(level));
        let props = amqprs::BasicProperties::default().with_headers(h).finish();
        ch.basic_publish(
            props,
            body.as_bytes().to_vec(),
            BasicPublishArguments::new(&x, ""),
        )
    };
    send("us", 3, "no").await.unwrap();
    send("eu", 2, "no").await.unwrap();
    send("eu", 3, "yes").await.unwrap();
    let (_, mut rx) = amqprs_consume(&ch, &q, true).await;
    assert_eq!(amqprs_body(&amqprs_next(&mut rx).await), b"yes");
    // Nothing else was routed: a marker published after the others arrives next.
    let mut h = FieldTable::new();
    h.insert(
        "region".try_into().unwrap(),
        FieldValue::S("eu".try_into().unwrap()),
    );
    h.insert("level".try_into().unwrap(), FieldValue::I(3));
    ch.basic_publish(
        amqprs::BasicProperties::default().with_headers(h).finish(),
        b"marker".to_vec(),
        BasicPublishArguments::new(&x, ""),
    )
    .await
    .unwrap();
    assert_eq!(amqprs_body(&amqprs_next(&mut rx).await), b"marker");
    ch.exchange_delete(amqprs::channel::ExchangeDeleteArguments::new(&x))
        .await
        .unwrap();
    conn.close().await.unwrap();
    broker.shutdown().await;
}

//! The admin API: round trips, every validation error, versions, conflicts, import.

use crate::{app_json, http, runtime, write, Orch};

#[test]
fn apps_round_trip_with_versions_and_conflicts() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let orch = Orch::start(Orch::config(&zk, "o1"));
        orch.ready().await;

        let created = write(
            "POST",
            &orch.url("/v1/apps"),
            &app_json("shop", &["shop.test", "*.shop.test"], &["127.0.0.1:9001"]),
            &[],
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.headers["etag"], "\"0\"");
        assert_eq!(created.headers["location"], "/v1/apps/shop");

        let got = http("GET", &orch.url("/v1/apps/shop"), &[], "")
            .await
            .unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(
            got.json()["domains"],
            serde_json::json!(["shop.test", "*.shop.test"])
        );
        assert_eq!(got.json()["version"], 0);

        // The same id again, or another app on a taken domain: 409, naming the owner.
        let again = write(
            "POST",
            &orch.url("/v1/apps"),
            &app_json("shop", &["other.test"], &["127.0.0.1:9001"]),
            &[],
        )
        .await;
        assert_eq!(
            (again.status, again.json()["error"].as_str()),
            (409, Some("app_exists"))
        );
        let thief = write(
            "POST",
            &orch.url("/v1/apps"),
            &app_json("thief", &["shop.test"], &["127.0.0.1:9002"]),
            &[],
        )
        .await;
        assert_eq!(thief.status, 409, "{}", thief.body);
        assert_eq!(thief.json()["error"], "domain_conflict");
        assert!(
            thief.json()["detail"]
                .as_str()
                .unwrap()
                .contains("app shop"),
            "{}",
            thief.body
        );
        assert_eq!(
            http("GET", &orch.url("/v1/apps/thief"), &[], "")
                .await
                .unwrap()
                .status,
            404
        );

        // Replace with If-Match: the right version wins, a stale one gets 412.
        let body = app_json(
            "shop",
            &["shop.test", "new.test"],
            &["127.0.0.1:9001", "127.0.0.1:9003"],
        );
        let replaced = write(
            "PUT",
            &orch.url("/v1/apps/shop"),
            &body,
            &[("if-match", "\"0\"")],
        )
        .await;
        assert_eq!(replaced.status, 200, "{}", replaced.body);
        assert_eq!(replaced.headers["etag"], "\"1\"");
        let stale = write(
            "PUT",
            &orch.url("/v1/apps/shop"),
            &body,
            &[("if-match", "\"0\"")],
        )
        .await;
        assert_eq!(
            (stale.status, stale.json()["error"].as_str()),
            (412, Some("version_mismatch"))
        );
        // The dropped wildcard is free again; the new domain is taken.
        let wild = write(
            "POST",
            &orch.url("/v1/apps"),
            &app_json("wild", &["*.shop.test"], &["127.0.0.1:9004"]),
            &[],
        )
        .await;
        assert_eq!(wild.status, 201, "{}", wild.body);
        let taken = write(
            "POST",
            &orch.url("/v1/apps"),
            &app_json("late", &["new.test"], &["127.0.0.1:9004"]),
            &[],
        )
        .await;
        assert_eq!(taken.status, 409);

        // Lists are paged in id order and filter by domain.
        for i in 0..5 {
            let r = write(
                "POST",
                &orch.url("/v1/apps"),
                &app_json(
                    &format!("app{i}"),
                    &[&format!("app{i}.test")],
                    &["127.0.0.1:9005"],
                ),
                &[],
            )
            .await;
            assert_eq!(r.status, 201);
        }
        let page = http("GET", &orch.url("/v1/apps?limit=3"), &[], "")
            .await
            .unwrap()
            .json();
        let ids: Vec<_> = page["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["app0", "app1", "app2"]);
        assert_eq!(page["next"], "app2");
        let page = http("GET", &orch.url("/v1/apps?limit=3&after=app2"), &[], "")
            .await
            .unwrap()
            .json();
        let ids: Vec<_> = page["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["app3", "app4", "shop"]);
        let page = http("GET", &orch.url("/v1/apps?domain=new.test"), &[], "")
            .await
            .unwrap()
            .json();
        assert_eq!(page["apps"][0]["id"], "shop");

        // Delete, with a stale If-Match first.
        let refused = write(
            "DELETE",
            &orch.url("/v1/apps/shop"),
            "",
            &[("if-match", "0")],
        )
        .await;
        assert_eq!(refused.status, 412);
        let deleted = write(
            "DELETE",
            &orch.url("/v1/apps/shop"),
            "",
            &[("if-match", "1")],
        )
        .await;
        assert_eq!(deleted.status, 204, "{}", deleted.body);
        assert_eq!(
            http("GET", &orch.url("/v1/apps/shop"), &[], "")
                .await
                .unwrap()
                .status,
            404
        );
        assert_eq!(
            write("DELETE", &orch.url("/v1/apps/shop"), "", &[])
                .await
                .status,
            404
        );
        // Its domains are free.
        let reuse = write(
            "POST",
            &orch.url("/v1/apps"),
            &app_json("reuse", &["shop.test", "new.test"], &["127.0.0.1:9006"]),
            &[],
        )
        .await;
        assert_eq!(reuse.status, 201, "{}", reuse.body);
        orch.stop().await;
    });
}

#[test]
fn bad_requests_get_a_json_error_that_names_the_problem() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let mut config = Orch::config(&zk, "o1");
        config.max_body_bytes = 4096;
        let orch = Orch::start(config);
        orch.ready().await;
        let url = orch.url("/v1/apps");

        // Every invalid field at once.
        let bad = r#"{"id":"Bad_Id","domains":["UPPER.test","ok.test","ok.test"],"backends":[{"addr":"nope","weight":0}],"colour":"red"}"#;
        let answer = write("POST", &url, bad, &[]).await;
        assert_eq!(answer.status, 400);
        let json = answer.json();
        assert_eq!(json["error"], "invalid");
        let fields: Vec<&str> = json["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        for field in ["id", "domains[0]", "backends[0].addr", "backends[0].weight", "colour"] {
            assert!(fields.contains(&field), "{field} not reported in {fields:?}");
        }
        assert!(fields.iter().any(|f| f.starts_with("domains")), "{fields:?}");

        let broken = write("POST", &url, "{not json", &[]).await;
        assert_eq!((broken.status, broken.json()["error"].as_str()), (400, Some("invalid")));

        // No token, a wrong token: 401, and nothing written.
        let good = crate::app_json("good", &["good.test"], &["127.0.0.1:9001"]);
        let anonymous = http("POST", &url, &[], &good).await.unwrap();
        assert_eq!((anonymous.status, anonymous.json()["error"].as_str()), (401, Some("unauthorized")));
        let wrong = http("POST", &url, &[("authorization", "Bearer not-the-token-at-all")], &good).await.unwrap();
        assert_eq!(wrong.status, 401);
        assert_eq!(http("GET", &orch.url("/v1/apps/good"), &[], "").await.unwrap().status, 404);

        // Too large: 413.
        let huge = format!("{{\"id\":\"big\",\"domains\":[\"big.test\"],\"backends\":[{{\"addr\":\"127.0.0.1:1\"}}],\"pad\":\"{}\"}}", "x".repeat(10_000));
        let answer = write("POST", &url, &huge, &[]).await;
        assert_eq!((answer.status, answer.json()["error"].as_str()), (413, Some("too_large")));

        // Wrong ids, versions, queries, paths.
        assert_eq!(http("GET", &orch.url("/v1/apps/UPPER"), &[], "").await.unwrap().status, 400);
        let answer = write("PUT", &orch.url("/v1/apps/good"), &good, &[("if-match", "soon")]).await;
        assert_eq!(answer.status, 400);
        let answer = write("PUT", &orch.url("/v1/apps/other"), &good, &[]).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert!(answer.json()["detail"].as_str().unwrap().contains("id"));
        assert_eq!(http("GET", &orch.url("/v1/apps?limit=0"), &[], "").await.unwrap().status, 400);
        assert_eq!(http("GET", &orch.url("/v1/apps?colour=red"), &[], "").await.unwrap().status, 400);
        let nowhere = http("GET", &orch.url("/v2/nothing"), &[], "").await.unwrap();
        assert_eq!((nowhere.status, nowhere.json()["error"].as_str()), (404, Some("not_found")));
        orch.stop().await;
    });
}

fn import_lines(answer: &str) -> serde_json::Value {
    let last = answer.lines().last().expect("an import answer");
    let done: serde_json::Value = serde_json::from_str(last).unwrap();
    done["done"].clone()
}

#[test]
fn bulk_import_reports_bad_lines_and_imports_the_rest_or_nothing() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let orch = Orch::start(Orch::config(&zk, "o1"));
        orch.ready().await;
        let mut body = String::new();
        for i in 0..500 {
            body.push_str(&app_json(
                &format!("bulk{i}"),
                &[&format!("bulk{i}.test")],
                &["127.0.0.1:9001"],
            ));
            body.push('\n');
        }
        body.push_str("{oops\n"); // line 501
        body.push_str(&app_json("dup", &["bulk7.test"], &["127.0.0.1:9001"])); // line 502
        body.push('\n');
        body.push_str(&app_json("last", &["last.test"], &["127.0.0.1:9001"])); // line 503, no newline

        // Atomic: one bad line and nothing is imported.
        let answer = write("POST", &orch.url("/v1/apps/import?atomic=true"), &body, &[]).await;
        assert_eq!(answer.status, 200);
        let done = import_lines(&answer.body);
        assert_eq!(done["imported"], 0, "{done}");
        assert_eq!(done["lines"], 503);
        let lines: Vec<u64> = done["failed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, [501, 502]);
        assert_eq!(
            http("GET", &orch.url("/v1/apps/bulk0"), &[], "")
                .await
                .unwrap()
                .status,
            404
        );

        // Not atomic: the good lines go in.
        let answer = write("POST", &orch.url("/v1/apps/import"), &body, &[]).await;
        let done = import_lines(&answer.body);
        assert_eq!(done["imported"], 501, "{done}");
        let failed = done["failed"].as_array().unwrap();
        assert_eq!(failed.len(), 2);
        assert!(
            failed[1]["error"].as_str().unwrap().contains("line 8"),
            "{}",
            failed[1]
        );
        assert_eq!(
            http("GET", &orch.url("/v1/apps/last"), &[], "")
                .await
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            http("GET", &orch.url("/v1/apps/bulk499"), &[], "")
                .await
                .unwrap()
                .status,
            200
        );

        // Importing the same again: every app already exists, reported per line.
        let answer = write("POST", &orch.url("/v1/apps/import"), &body, &[]).await;
        let done = import_lines(&answer.body);
        assert_eq!(done["imported"], 0);
        assert_eq!(done["failed"].as_array().unwrap().len(), 503);
        orch.stop().await;
    });
}

#[test]
fn metrics_export_the_layer_and_the_servers_size_figures() {
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let orch = Orch::start(Orch::config(&zk, "o1"));
        orch.ready().await;
        let created = write(
            "POST",
            &orch.url("/v1/apps"),
            &app_json("m", &["m.test"], &["127.0.0.1:9001"]),
            &[],
        )
        .await;
        assert_eq!(created.status, 201);
        let text = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                let text = http("GET", &orch.url("/metrics"), &[], "")
                    .await
                    .unwrap()
                    .body;
                if text.contains("figure=\"zk_approximate_data_size\"") {
                    return text;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("the servers' mntr figures are exported");
        for name in [
            "switchyard_orchestrator_apps",
            "switchyard_orchestrator_ready",
            "switchyard_orchestrator_shards_owned",
            "switchyard_zk_largest_payload_bytes",
            "switchyard_zk_request_duration_seconds",
            "switchyard_zk_server_mntr",
        ] {
            assert!(text.contains(name), "{name} missing from /metrics");
        }
        // The process's own figures, under the Prometheus client libraries' names.
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} missing from /metrics"))
                .parse()
                .unwrap()
        };
        // Its ZooKeeper session and its listener at least; the test process runs it.
        let open = value("process_open_fds");
        assert!(open >= 2.0 && open < value("process_max_fds"), "{open}");
        let resident = value("process_resident_memory_bytes");
        assert!(resident > 1e6 && resident < 1e11, "{resident} bytes");
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started}"
        );
        orch.stop().await;
    });
}

#[test]
fn a_new_region_is_created_whole_every_time() {
    // Parents and children used to go out in separate multis that could land in any
    // order: about one creation in four failed on a child before its parent.
    let zk = testkit::Zk::standalone();
    runtime().block_on(async {
        let client = coord::Zk::connect(coord::Config::new(zk.connect_string()))
            .await
            .unwrap();
        for region in ["r1", "r2", "r3", "r4"] {
            let layout = orchestrator::Layout::new(region)
                .open(&client, 1024)
                .await
                .unwrap();
            assert_eq!(layout.shard_count(), 1024);
            let shards = client.children(&layout.shards()).await.unwrap();
            assert_eq!(shards.len(), 1024, "{region}");
            for shard in ["0000", "0511", "1023"] {
                let mut children = client
                    .children(&format!("{}/{shard}", layout.shards()))
                    .await
                    .unwrap();
                children.sort();
                assert_eq!(children, ["apps", "health"], "{region}/{shard}");
            }
            // Opening an existing region reads its shard count, whatever is asked.
            let again = orchestrator::Layout::new(region)
                .open(&client, 16)
                .await
                .unwrap();
            assert_eq!(again.shard_count(), 1024);
        }
    });
}

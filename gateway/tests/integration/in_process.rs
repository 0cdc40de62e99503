//! Gateways on in-process services (`run_with`): the in-process API and
//! backplane from the crate, real WebSocket clients, no Postgres or Redis.
//! The whole command path (upgrade, session, hub, socket) without the
//! network services behind it.

use chorus_gateway::Services;
use chorus_gateway::api_client::MemoryApi;
use chorus_gateway::backplane::{MemoryBackplane, MemoryBus};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn gateways_on_in_process_services_deliver_across_and_answer_rejoins_locally() {
    let bus = MemoryBus::new();
    let api = MemoryApi::new();
    api.publish_to(MemoryBackplane::new(bus.clone(), "api"));
    let (alice, bob) = (uid("alice"), uid("bob"));
    let (ta, tb) = (token(&alice), token(&bob));
    api.add_token(&ta, &alice, &format!("{alice} name"));
    api.add_token(&tb, &bob, &format!("{bob} name"));
    let c = api.create_community(&alice);
    api.add_member(c, &bob);
    let c = c.to_string();
    let services = |id: &str| Services {
        api: api.clone(),
        backplane: MemoryBackplane::new(bus.clone(), id),
    };
    let opts = GwOpts::new("redis://unused");
    let gw1 = start_gateway_on(services("gw-1"), opts.clone()).await;
    let gw2 = start_gateway_on(services("gw-2"), opts).await;

    let mut a = Client::connect(&gw1.url, &ta).await;
    let mut b = Client::connect(&gw2.url, &tb).await;
    a.join(&c, None).await;
    b.join(&c, None).await;
    assert_eq!(
        a.event_of("user-joined").await["data"]["userId"],
        bob.as_str()
    );

    let sent = a
        .ok(
            "send-message",
            json!({"communityId": c, "content": "in process"}),
        )
        .await;
    assert_eq!(sent["message"]["seq"], 1);
    assert_eq!(b.seqs_until(1).await, [1]);
    assert_eq!(a.seqs_until(1).await, [1]);

    // Joining again answers from the gateway: no access check.
    let checks = api.accesses();
    let ack = b.join(&c, Some(0)).await;
    assert_eq!(
        (ack["headSeq"].clone(), ack["missed"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(api.accesses(), checks);
    let online: Vec<String> = serde_json::from_value(ack["online"].clone()).unwrap();
    assert!(
        online.contains(&alice) && online.contains(&bob),
        "{online:?}"
    );

    // Typing from two of bob's tabs within a second is broadcast once.
    let mut b2 = Client::connect(&gw2.url, &tb).await;
    b2.join(&c, None).await;
    let typing = json!({"communityId": c, "isTyping": true});
    b.ok("typing", typing.clone()).await;
    b2.ok("typing", typing.clone()).await;
    b.ok("typing", typing).await;
    b.ok("typing", json!({"communityId": c, "isTyping": false}))
        .await;
    let first = a.event_of("user-typing").await;
    assert_eq!(first["data"]["isTyping"], true);
    let next = a.next_event().await;
    assert_eq!(
        (next["type"].as_str(), next["data"]["isTyping"].as_bool()),
        (Some("user-typing"), Some(false)),
        "the repeats were not broadcast: {next}"
    );
}

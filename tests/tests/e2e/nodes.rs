//! One relay as two nodes over a NATS JetStream server: clients that know
//! both addresses (`relay set ... --node`) go on when the node they used
//! dies; a client that knows only the dead one cannot, which is what the
//! second address buys. Skipped, saying so, without a nats-server binary.

use std::time::Duration;

use sotto_relay::nats_cluster::NatsCluster;
use sotto_tests::{Client, Relay};
use tempfile::TempDir;

/// A NATS server and two relay nodes sharing one key over it.
struct Nodes {
    _dir: TempDir,
    _nats: NatsCluster,
    nodes: [Relay; 2],
}

fn nodes() -> Option<Nodes> {
    let dir = TempDir::new().unwrap();
    let Some(nats) = NatsCluster::start(&dir.path().join("nats"), 1).unwrap() else {
        eprintln!("skipped: no nats-server (set NATS_SERVER_BIN or put it on PATH)");
        return None;
    };
    let servers = nats
        .urls()
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!("[store]\nbackend = \"nats\"\nservers = [{servers}]\nreplicas = 1\n");
    let (a, b) = (dir.path().join("node-a"), dir.path().join("node-b"));
    let first = Relay::start(&a, Some(&config));
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(a.join("relay.key"), b.join("relay.key")).unwrap();
    let second = Relay::start(&b, Some(&config));
    assert_eq!(first.key, second.key, "the nodes share the relay's key");
    Some(Nodes {
        _dir: dir,
        _nats: nats,
        nodes: [first, second],
    })
}

/// A client of node A that also knows node B.
fn client_of_both(n: &Nodes) -> Client {
    let c = Client::new(&n.nodes[0]);
    let out = c
        .run(&[
            "relay",
            "set",
            &n.nodes[0].addr,
            &n.nodes[0].key,
            "--node",
            &n.nodes[1].addr,
        ])
        .ok();
    assert!(out.is_empty() || !out.contains("error"), "{out}");
    c
}

fn inbox_until(c: &Client, needle: &str) -> String {
    let mut all = String::new();
    for _ in 0..150 {
        all.push_str(&c.run(&["inbox"]).ok());
        if all.contains(needle) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    all
}

#[test]
fn clients_that_know_both_nodes_go_on_when_one_is_killed() {
    let Some(mut n) = nodes() else { return };
    let alice = client_of_both(&n);
    let bob = client_of_both(&n);
    let carol = Client::new(&n.nodes[0]);
    alice.add_contact("bob", &bob);
    bob.add_contact("alice", &alice);
    carol.add_contact("bob", &bob);
    let config = std::fs::read_to_string(alice.home().join("config.toml")).unwrap();
    assert!(
        config.contains(&format!("relay_nodes = [\"{}\"]", n.nodes[1].addr)),
        "{config}"
    );

    alice.run(&["send", "bob", "before"]).ok();
    assert!(inbox_until(&bob, "alice: before").contains("alice: before"));

    // Bob's chat is connected to node A when it dies.
    let mut chat = bob.spawn(&["chat", "--plain", "alice"]);
    chat.wait_stderr("connected", 1);
    n.nodes[0].kill();

    // Alice's send goes through node B; so does bob's chat, live.
    alice.run(&["send", "bob", "after the kill"]).ok();
    let line = chat.next_line(Duration::from_secs(60));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.ends_with("alice: after the kill")),
        "{line:?}\n{}",
        chat.stderr()
    );
    chat.close_stdin();
    assert!(chat.finish().0, "the chat ended cleanly");

    // Carol, who knows only node A, cannot send: the second address is what
    // kept the others going.
    let err = carol.run(&["send", "bob", "from carol"]).fails();
    assert!(err.contains("cannot reach"), "{err}");

    // Nothing was shown twice: bob's inbox after the chat holds neither
    // message again.
    let again = bob.run(&["inbox"]).ok();
    assert!(!again.contains("alice:"), "{again}");
}

#[test]
fn setting_the_nodes_of_the_same_relay_is_not_a_move() {
    let Some(n) = nodes() else { return };
    let alice = Client::new(&n.nodes[0]);
    let bob = Client::new(&n.nodes[0]);
    alice.add_contact("bob", &bob);
    let run = alice.run(&[
        "relay",
        "set",
        &n.nodes[0].addr,
        &n.nodes[0].key,
        "--node",
        &n.nodes[1].addr,
    ]);
    let said = run.stderr();
    assert!(
        said.contains(&format!("also at {}", n.nodes[1].addr)),
        "{said}"
    );
    let config = std::fs::read_to_string(alice.home().join("config.toml")).unwrap();
    assert!(!config.contains("\ndraining ="), "{config}");
    // No contact was told of a move: bob's inbox is empty.
    let got = bob.run(&["inbox"]).ok();
    assert!(!got.contains("moved"), "{got}");
    assert!(!said.contains("told"), "{said}");
}

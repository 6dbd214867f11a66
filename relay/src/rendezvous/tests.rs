use std::net::IpAddr;

use super::*;

fn source(ip: &str) -> Source {
    Source::from(ip.parse::<IpAddr>().unwrap())
}

fn queue() -> (mpsc::Sender<RelayMsg>, mpsc::Receiver<RelayMsg>) {
    mpsc::channel(8)
}

fn limits() -> PairingLimits {
    PairingLimits {
        slot_expiry: Duration::from_secs(60),
        max_slots: 3,
        max_slots_per_address: 2,
        opens_per_minute: 3,
        max_message_len: 16,
    }
}

fn message(m: Option<RelayMsg>) -> Vec<u8> {
    match m {
        Some(RelayMsg::PairMessage { message }) => message.into_vec(),
        other => panic!("expected a PairMessage, got {other:?}"),
    }
}

#[tokio::test]
async fn a_slot_forwards_both_ways_and_takes_one_join() {
    let r = Rendezvous::new(limits());
    let (itx, mut irx) = queue();
    let inviter = r.open(source("10.0.0.1"), itx).unwrap();
    let (jtx, mut jrx) = queue();
    let joiner = r
        .join(inviter.slot(), jtx, b"start".to_vec())
        .unwrap()
        .expect("a live slot");
    assert_eq!(message(irx.recv().await), b"start");
    inviter.send(b"reply".to_vec()).unwrap();
    assert_eq!(message(jrx.recv().await), b"reply");
    joiner.send(b"answer".to_vec()).unwrap();
    assert_eq!(message(irx.recv().await), b"answer");

    // A second joiner, with any code, finds nothing: one guess per slot.
    let (xtx, _xrx) = queue();
    assert!(r
        .join(inviter.slot(), xtx, b"guess".to_vec())
        .unwrap()
        .is_none());
    assert!(irx.try_recv().is_err(), "the inviter hears nothing of it");

    // The joiner leaves: the inviter is told, and the slot is gone for good.
    drop(joiner);
    assert_eq!(irx.recv().await, Some(RelayMsg::PairGone));
    assert_eq!(inviter.send(b"late".to_vec()), Err(SendRefused::Alone));
    assert_eq!(r.live(), 0);
    let (ytx, _yrx) = queue();
    assert!(r
        .join(inviter.slot(), ytx, b"again".to_vec())
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn an_unjoined_slot_has_nobody_to_send_to_and_unknown_slots_are_refused() {
    let r = Rendezvous::new(limits());
    let (itx, _irx) = queue();
    let inviter = r.open(source("10.0.0.1"), itx).unwrap();
    assert_eq!(inviter.send(b"x".to_vec()), Err(SendRefused::Alone));
    let (jtx, _jrx) = queue();
    let other = if inviter.slot() == 1 { 2 } else { 1 };
    assert!(r.join(other, jtx, b"x".to_vec()).unwrap().is_none());
    let (jtx, _jrx) = queue();
    assert_eq!(
        r.join(inviter.slot(), jtx, vec![0; 17]).err(),
        Some(SendRefused::TooLong(17)),
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_expires_and_both_parties_are_told() {
    let r = Rendezvous::new(limits());
    let (itx, mut irx) = queue();
    let inviter = r.open(source("10.0.0.1"), itx).unwrap();
    let (jtx, mut jrx) = queue();
    let _joiner = r.join(inviter.slot(), jtx, b"s".to_vec()).unwrap().unwrap();
    let _ = irx.recv().await;
    tokio::time::advance(Duration::from_secs(59)).await;
    inviter.send(b"in time".to_vec()).unwrap();
    assert_eq!(message(jrx.recv().await), b"in time");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(inviter.send(b"late".to_vec()), Err(SendRefused::Alone));
    assert_eq!(irx.recv().await, Some(RelayMsg::PairGone));
    assert_eq!(jrx.recv().await, Some(RelayMsg::PairGone));

    // An expired slot that nobody joined is no longer joinable.
    let (itx, _irx) = queue();
    let waiting = r.open(source("10.0.0.1"), itx).unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    let (jtx, _jrx) = queue();
    assert!(r
        .join(waiting.slot(), jtx, b"s".to_vec())
        .unwrap()
        .is_none());
}

#[tokio::test(start_paused = true)]
async fn slots_are_bounded_in_total_per_address_and_per_minute() {
    let r = Rendezvous::new(limits());
    let mut held = Vec::new();
    let mut open = |ip: &str| {
        let (tx, rx) = queue();
        r.open(source(ip), tx).map(|seat| held.push((seat, rx)))
    };
    open("10.0.0.1").unwrap();
    open("10.0.0.1").unwrap();
    assert_eq!(open("10.0.0.1"), Err(OpenRefused::Address(2)));
    open("10.0.0.2").unwrap();
    assert_eq!(open("10.0.0.3"), Err(OpenRefused::Full(3)));
    let numbers: std::collections::HashSet<u32> = held.iter().map(|(s, _)| s.slot()).collect();
    assert_eq!(numbers.len(), 3, "slot numbers are unique");
    assert!(numbers.iter().all(|n| (1..=99).contains(n)), "{numbers:?}");

    // Closing slots frees room, but not the minute's count of opens.
    held.clear();
    assert_eq!(r.live(), 0);
    let (tx, _rx) = queue();
    let again = r.open(source("10.0.0.1"), tx).unwrap();
    drop(again);
    let (tx, _rx) = queue();
    assert_eq!(
        r.open(source("10.0.0.1"), tx).err(),
        Some(OpenRefused::Rate(3))
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    let (tx, _rx) = queue();
    assert!(r.open(source("10.0.0.1"), tx).is_ok());
}

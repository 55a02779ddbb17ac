//! The history of rollouts.

use super::*;

#[test]
fn the_history_says_who_replaced_whom_and_how_each_rollout_ended() {
    let mut r = Rig::new(settings());
    r.want("1.0", 0.0);
    r.ready(1, 0.1);
    r.want("2.0", 1.0);
    r.ready(2, 1.1);
    r.exited(1, 1.2);
    r.want("3.0", 2.0);
    r.exited(3, 2.1); // fails before READY=1
    r.want("4.0", 3.0);
    r.want("5.0", 3.1); // supersedes 4.0
    r.ready(5, 3.2);
    r.exited(4, 3.3);
    r.exited(2, 3.4);
    r.exited(5, 4.0); // in probation: back to 2.0
    r.ready(6, 4.1);
    r.tick(14.1); // its probation is over
    r.exited(6, 20.0); // restarted
    r.ready(7, 20.1);
    type Row = (
        u64,
        String,
        Trigger,
        Outcome,
        Option<GenId>,
        Option<(String, GenId)>,
    );
    let got: Vec<Row> =
        r.f.rollouts()
            .map(|h| {
                (
                    h.seq,
                    h.release.as_ref().map(Release::name).unwrap_or_default(),
                    h.trigger,
                    h.outcome.clone(),
                    h.generation,
                    h.replaced
                        .as_ref()
                        .map(|p| (p.release.clone(), p.generation)),
                )
            })
            .collect();
    let rolled_back = "release app.5.0 crashed 0 s after going live; rolled back to app.2.0";
    assert_eq!(
        got,
        vec![
            (
                1,
                "app.1.0".into(),
                Trigger::Edit,
                Outcome::Succeeded,
                Some(1),
                None
            ),
            (
                2,
                "app.2.0".into(),
                Trigger::Edit,
                Outcome::Succeeded,
                Some(2),
                Some(("app.1.0".into(), 1))
            ),
            (
                3,
                "app.3.0".into(),
                Trigger::Edit,
                Outcome::Failed("exited before READY=1 (exit status 1)".into()),
                Some(3),
                None
            ),
            (
                4,
                "app.4.0".into(),
                Trigger::Edit,
                Outcome::Superseded,
                Some(4),
                None
            ),
            (
                5,
                "app.5.0".into(),
                Trigger::Edit,
                Outcome::Failed(rolled_back.into()),
                Some(5),
                Some(("app.2.0".into(), 2))
            ),
            (
                6,
                "app.2.0".into(),
                Trigger::Rollback,
                Outcome::Succeeded,
                Some(6),
                Some(("app.5.0".into(), 5))
            ),
            (
                7,
                "app.2.0".into(),
                Trigger::Restart,
                Outcome::Succeeded,
                Some(7),
                Some(("app.2.0".into(), 6))
            ),
        ]
    );
    assert_eq!(r.f.last_rollout().unwrap().seq, 5, "the last one asked for");
}

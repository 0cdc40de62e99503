//! The coordinator's view of its groups: in this process (small runs,
//! tests) or in worker processes (`chorus-loadtest worker`), one per
//! 127.0.0.x source address, so a run can hold more connections than one
//! process's open-file limit and than one source address's ports. Workers
//! speak JSON lines on stdin/stdout.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::group::{Drive, Expect, Group, GroupSpec, Progress, Report};

/// Coordinator → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Cmd {
    Start(Box<GroupSpec>),
    Drive(Drive),
    Storm,
    Verify(Expect),
    Quit,
}

/// Worker → coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    Progress(Progress),
    Driven,
    Report(Box<Report>),
    Error(String),
}

#[derive(Debug)]
struct Remote {
    child: Child,
    stdin: ChildStdin,
    progress: Arc<Mutex<Progress>>,
    replies: mpsc::Receiver<Reply>,
}

#[derive(Debug)]
enum Member {
    Local(Arc<Group>),
    Remote(Box<Remote>),
}

#[derive(Debug)]
pub struct Fleet {
    members: Vec<Member>,
}

impl Remote {
    async fn send(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn reply(&mut self) -> anyhow::Result<Reply> {
        match self.replies.recv().await {
            Some(Reply::Error(e)) => bail!("worker failed: {e}"),
            Some(r) => Ok(r),
            None => bail!("worker exited"),
        }
    }
}

impl Fleet {
    /// Starts the groups: in worker processes running `worker` (this
    /// executable when `None`) when `processes`, else here.
    pub async fn start(
        specs: Vec<GroupSpec>,
        processes: bool,
        worker: Option<&std::path::Path>,
    ) -> anyhow::Result<Fleet> {
        let mut members = Vec::new();
        for spec in specs {
            if !processes {
                members.push(Member::Local(Group::start(spec)));
                continue;
            }
            let exe = match worker {
                Some(w) => w.to_owned(),
                None => std::env::current_exe().context("own executable")?,
            };
            let mut child = Command::new(exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("start a worker process")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let progress = Arc::new(Mutex::new(Progress::default()));
            let (tx, replies) = mpsc::channel(16);
            let p = progress.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Reply>(&line) {
                        Ok(Reply::Progress(pr)) => {
                            *p.lock().unwrap_or_else(|e| e.into_inner()) = pr
                        }
                        Ok(r) => {
                            if tx.send(r).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx
                                .send(Reply::Error(format!("bad reply {line:?}: {e}")))
                                .await;
                            return;
                        }
                    }
                }
            });
            let mut remote = Remote {
                child,
                stdin,
                progress,
                replies,
            };
            remote.send(&Cmd::Start(Box::new(spec))).await?;
            members.push(Member::Remote(Box::new(remote)));
        }
        Ok(Fleet { members })
    }

    pub fn progress(&self) -> Progress {
        let mut sum = Progress::default();
        for m in &self.members {
            let p = match m {
                Member::Local(g) => g.progress(),
                Member::Remote(r) => *r.progress.lock().unwrap_or_else(|e| e.into_inner()),
            };
            sum.started += p.started;
            sum.joined += p.joined;
            sum.rejoined += p.rejoined;
            sum.failed += p.failed;
            sum.deliveries += p.deliveries;
        }
        sum
    }

    /// PIDs of the worker processes (for the client's own CPU share).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![std::process::id()];
        for m in &self.members {
            if let Member::Remote(r) = m
                && let Some(pid) = r.child.id()
            {
                pids.push(pid);
            }
        }
        pids
    }

    pub async fn storm(&mut self) -> anyhow::Result<()> {
        for m in &mut self.members {
            match m {
                Member::Local(g) => g.storm(),
                Member::Remote(r) => r.send(&Cmd::Storm).await?,
            }
        }
        Ok(())
    }

    /// Every group drives its socket traffic; returns when all are done.
    pub async fn drive(&mut self, d: Drive) -> anyhow::Result<()> {
        let futs = self.members.iter_mut().map(|m| async move {
            match m {
                Member::Local(g) => {
                    g.drive(d).await;
                    Ok(())
                }
                Member::Remote(r) => {
                    r.send(&Cmd::Drive(d)).await?;
                    match r.reply().await? {
                        Reply::Driven => Ok(()),
                        other => bail!("unexpected reply {other:?}"),
                    }
                }
            }
        });
        join_all(futs).await.into_iter().collect()
    }

    /// Verifies every group against `expect` and merges the reports.
    pub async fn verify(&mut self, expect: &Expect) -> anyhow::Result<Report> {
        let futs = self.members.iter_mut().map(|m| async move {
            match m {
                Member::Local(g) => Ok(g.verify(expect).await),
                Member::Remote(r) => {
                    r.send(&Cmd::Verify(expect.clone())).await?;
                    match r.reply().await? {
                        Reply::Report(rep) => Ok(*rep),
                        other => bail!("unexpected reply {other:?}"),
                    }
                }
            }
        });
        let mut all = Report::default();
        for r in join_all(futs).await {
            all.merge(&r?);
        }
        Ok(all)
    }

    pub async fn quit(self) {
        for m in self.members {
            match m {
                Member::Local(g) => g.quit().await,
                Member::Remote(mut r) => {
                    let _ = r.send(&Cmd::Quit).await;
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(15), r.child.wait())
                            .await;
                }
            }
        }
    }
}

/// `chorus-loadtest worker`: one group, driven by JSON lines on stdin.
pub async fn worker() -> anyhow::Result<()> {
    let (out, mut out_rx) = mpsc::channel::<Reply>(64);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(r) = out_rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&r) else {
                continue;
            };
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut group: Option<Arc<Group>> = None;
    while let Some(line) = lines.next_line().await? {
        let cmd: Cmd = serde_json::from_str(&line).context("bad command")?;
        match cmd {
            Cmd::Start(spec) => {
                let g = Group::start(*spec);
                let (g2, out2) = (g.clone(), out.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        if out2.send(Reply::Progress(g2.progress())).await.is_err() {
                            return;
                        }
                    }
                });
                group = Some(g);
            }
            Cmd::Drive(d) => {
                let (g, out) = (group.clone().context("drive before start")?, out.clone());
                tokio::spawn(async move {
                    g.drive(d).await;
                    let _ = out.send(Reply::Driven).await;
                });
            }
            Cmd::Storm => group.as_ref().context("storm before start")?.storm(),
            Cmd::Verify(e) => {
                let (g, out) = (group.clone().context("verify before start")?, out.clone());
                tokio::spawn(async move {
                    let r = g.verify(&e).await;
                    let _ = out.send(Reply::Report(Box::new(r))).await;
                });
            }
            Cmd::Quit => break,
        }
    }
    if let Some(g) = group {
        g.quit().await;
    }
    drop(out);
    writer.abort();
    Ok(())
}

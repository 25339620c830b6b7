//! Rootless Podman containers are containers (issue 18, point 3), end to end:
//! the test user's own Podman service (started by tests/run.sh) lists them,
//! they are that user's whatever their labels say, and their GPU processes
//! are attributed to them through the PID namespace. And a user's socket is
//! that user's program: a fake service run by the test user can neither
//! replace a container of the system's engine, nor put someone else's
//! process in its containers, nor stand in for another server, nor swamp
//! the scanner with an endless answer.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{docker, docker_host, test_image, test_user, unique, Containers, Proc, Scratch};
use serde_json::Value;

/// `podman` as the test user, with the storage and flags of tests/run.sh.
fn podman(args: &[&str]) -> String {
    let cmd = std::env::var("DW_TEST_PODMAN")
        .unwrap_or_else(|_| panic!("no rootless Podman (DW_TEST_PODMAN): run tests/run.sh"));
    let out = Command::new(cmd).args(args).output().expect("run podman");
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The folder holding the users' runtime folders (stands for /run/user).
fn runtime_dir() -> String {
    std::env::var("DW_TEST_PODMAN_RUNTIME_DIR")
        .unwrap_or_else(|_| panic!("no DW_TEST_PODMAN_RUNTIME_DIR: run tests/run.sh"))
}

/// Podman containers of one test, removed when dropped.
struct Pods(Vec<String>);

impl Drop for Pods {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = Command::new(std::env::var("DW_TEST_PODMAN").unwrap_or_default())
                .args(["rm", "-f", "-t", "0", id])
                .output();
        }
    }
}

/// The inode of a process's PID namespace.
fn pid_ns(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .expect("ns/pid")
        .ino()
}

/// The host PID of the process whose command line is `argv` in the PID
/// namespace of `main`, waiting for it to start.
fn pid_in_namespace_of(main: u32, argv: &[&str]) -> u32 {
    let ns = pid_ns(main);
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|&pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want)
                    && std::fs::metadata(format!("/proc/{pid}/ns/pid")).is_ok_and(|m| m.ino() == ns)
            });
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no {argv:?} in the namespace of {main}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `argv` as the test user on the host (setpriv execs: the PID is its own).
fn as_test_user(argv: &[&str]) -> Proc {
    let (_, uid) = test_user();
    Proc(
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .args(["--clear-groups", "--"])
            .args(argv)
            .current_dir("/")
            .stdin(Stdio::null())
            .spawn()
            .expect("setpriv (util-linux)"),
    )
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == format!("detection.{t}"))
        .collect()
}

fn pids(entry: &Value) -> Vec<u64> {
    let mut pids: Vec<u64> = entry["gpu_processes"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["pid"].as_u64()).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

#[test]
#[ignore = "needs the private Docker engine and the test user's rootless Podman: run by tests/run.sh"]
fn rootless_podman_containers_are_their_owners_and_hold_their_gpu_processes() {
    let host = docker_host();
    let (user, _) = test_user();
    let s = Scratch::new();
    let name = unique("pm-gpu");
    // Its labels claim someone else and a managed origin: the socket's owner wins.
    let id = podman(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &name,
        "--label",
        "ds01.user=alice",
        &test_image(),
        "sleep",
        "600",
    ]);
    let _pods = Pods(vec![id.clone()]);
    assert_eq!(id.len(), 64, "{id}");
    let short = &id[..12];
    let main: u32 = podman(&["inspect", "-f", "{{.State.Pid}}", &id])
        .parse()
        .expect("pid");
    podman(&["exec", "-d", &id, "sleep", "599"]);
    let second = pid_in_namespace_of(main, &["sleep", "599"]);
    // The same user's process on the host: a host process, not the container's.
    let outside = as_test_user(&["sleep", "598"]);
    s.set_gpu_apps(&format!(
        "{main}, 1000, {u}\n{second}, 24, {u}\n{}, 10, {u}\n",
        outside.pid(),
        u = common::UUID
    ));
    let config = s.config(
        Some(&host),
        &format!(
            "[[collectors.podman]]\nruntime_dir = \"{}\"\n",
            runtime_dir()
        ),
    );

    s.scan_events(&config);
    let events = s.scan_events(&config);
    let inv = s.inventory();
    let e = &inv["containers"][short];
    assert_eq!(e["collector"], "podman", "{e:#}");
    assert_eq!(e["user"], user.as_str(), "{e:#}");
    assert_eq!(e["user_source"], "engine-owner", "{e:#}");
    assert_eq!(e["name"], name.as_str());
    assert_eq!(e["status"], "running");
    assert_eq!(e["inspect"]["main_pid"], main, "{e:#}");
    assert_eq!(pids(e), {
        let mut v = vec![u64::from(main), u64::from(second)];
        v.sort_unstable();
        v
    });
    assert_eq!(e["gpu_memory_mb"], 1024);
    let host_procs = &inv["host_processes"];
    let outside_entry = &host_procs[outside.pid().to_string()];
    assert_eq!(outside_entry["user"], user.as_str(), "{inv:#}");
    let started = of_type(&events, "container_gpu_started");
    assert_eq!(started.len(), 1, "{events:#?}");
    assert_eq!(started[0]["details"]["container_id"], short);
    assert_eq!(started[0]["details"]["user"], user.as_str());
    let podman_report = &inv["scan"]["collectors"]["podman"];
    assert_eq!(podman_report["ok"], true, "{podman_report}");
    assert!(
        podman_report["stats"]["sockets"].as_u64() >= Some(1),
        "{podman_report}"
    );

    // `ps` shows it with its owner.
    let ps = s.run(&config, &["ps", "-a"]);
    let text = String::from_utf8_lossy(&ps.stdout);
    let row = text
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains(&user), "{row}");

    // Gone from Podman: told exited once.
    podman(&["rm", "-f", "-t", "0", &id]);
    let events = s.scan_events(&config);
    let exited: Vec<_> = of_type(&events, "container_exited")
        .into_iter()
        .filter(|e| e["details"]["container_id"] == short)
        .collect();
    assert_eq!(exited.len(), 1, "{events:#?}");
    assert!(s.inventory()["containers"].get(short).is_none());
}

/// A fake Podman service run by the test user on `socket`: answers
/// `/containers/json` with `list`, any inspect with `inspect`, anything else
/// with `[]`; `huge` MiB of list instead when given.
fn fake_service(socket: &Path, list: &Value, inspect: &Value, huge_mib: u32) -> Proc {
    let script = format!(
        r#"
import http.server, socketserver, os, sys
LIST = {list:?}
INSPECT = {inspect:?}
HUGE = {huge_mib}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        path = self.path.split("?")[0]
        if path.endswith("/containers/json") and HUGE:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b'[' + b' ' * (1 << 20)
            try:
                for i in range(HUGE):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    chunk = b' ' * (1 << 20)
                self.wfile.write(b"1\r\n]\r\n0\r\n\r\n")
            except OSError:
                pass
            return
        body = (LIST if path.endswith("/containers/json") else INSPECT if path.endswith("/json") and "/containers/" in path else "[]").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    def get_request(self):
        r, _ = self.socket.accept()
        return r, ("podman", 0)
path = {path:?}
if os.path.exists(path): os.unlink(path)
S(path, H).serve_forever()
"#,
        list = list.to_string(),
        inspect = inspect.to_string(),
        path = socket.display().to_string(),
    );
    let p = as_test_user(&["/usr/bin/python3", "-c", &script]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the fake service did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// A runtime folder `<root>/<uid>/podman` owned by the test user, as
/// systemd makes `/run/user/<uid>`.
fn user_runtime(root: &Path) -> PathBuf {
    let (_, uid) = test_user();
    let dir = root.join(uid.to_string());
    std::fs::create_dir_all(dir.join("podman")).expect("runtime folder");
    for d in [dir.clone(), dir.join("podman")] {
        std::os::unix::fs::chown(&d, Some(uid), Some(uid)).expect("chown");
    }
    dir.join("podman").join("podman.sock")
}

#[test]
#[ignore = "needs the private Docker engine and the test user: run by tests/run.sh"]
fn a_users_podman_socket_speaks_for_nobody_else() {
    let host = docker_host();
    let (user, uid) = test_user();
    let s = Scratch::new();
    let mut c = Containers::new(&host);
    // A container of the system's engine, running as root, using a GPU.
    let real_name = unique("pm-victim");
    let real = c.run(&["--name", &real_name, &test_image(), "sleep", "600"]);
    let real_full = docker(&host, &["inspect", "-f", "{{.Id}}", &real]);
    let real_main: u32 = docker(&host, &["inspect", "-f", "{{.State.Pid}}", &real])
        .parse()
        .expect("pid");
    s.set_gpu_apps(&format!("{real_main}, 2048, {}\n", common::UUID));

    let root = tempfile::tempdir().expect("runtime root");
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let socket = user_runtime(root.path());
    let fake_id = format!("{:064x}", 0xfeed_u64);
    // The fake lists the real container as its own (stopped, renamed) and a
    // container of its own whose "main process" is the real one's.
    let list = serde_json::json!([
        {"Id": real_full, "Names": ["/hijacked"], "State": "exited", "Labels": {"ds01.user": "alice"}, "Image": "x"},
        {"Id": fake_id, "Names": ["/fake"], "State": "running", "Labels": {"ds01.user": "alice"}, "Image": "x"},
    ]);
    let inspect = serde_json::json!({
        "Id": fake_id, "State": {"Pid": real_main, "Status": "running"},
        "HostConfig": {"Runtime": "oci"}, "Config": {"User": ""}
    });
    let fake = fake_service(&socket, &list, &inspect, 0);
    let podman_table = format!(
        "[[collectors.podman]]\nruntime_dir = \"{}\"\nmax_answer_mb = 2\n",
        root.path().display()
    );
    let config = s.config(Some(&host), &podman_table);
    s.scan_events(&config);
    let events = s.scan_events(&config);
    let inv = s.inventory();
    let victim = &inv["containers"][&real];
    assert_eq!(victim["collector"], "docker", "{victim:#}");
    assert_eq!(victim["name"], real_name.as_str());
    assert_eq!(victim["status"], "running");
    assert_eq!(pids(victim), vec![u64::from(real_main)], "{inv:#}");
    let fake_entry = &inv["containers"][&fake_id[..12]];
    assert_eq!(fake_entry["collector"], "podman", "{inv:#}");
    assert_eq!(
        fake_entry["user"],
        user.as_str(),
        "labels cannot name alice"
    );
    assert!(
        fake_entry["inspect"].get("main_pid").is_none(),
        "{fake_entry:#}"
    );
    assert!(pids(fake_entry).is_empty(), "{fake_entry:#}");
    let stats = &inv["scan"]["collectors"]["podman"]["stats"];
    assert!(stats["main_pids_refused"].as_u64() >= Some(1), "{stats}");
    assert!(
        of_type(&events, "container_exited").is_empty(),
        "nothing of the real engine's is told gone: {events:#?}"
    );
    drop(fake);

    // A socket served by someone else (here root, chowned to the user) is
    // not asked; neither is a link to the system engine's socket.
    std::fs::remove_file(&socket).ok();
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::os::unix::fs::chown(&socket, Some(uid), Some(uid)).expect("chown");
    s.scan(&config);
    let inv = s.inventory();
    assert_eq!(
        inv["scan"]["collectors"]["podman"]["stats"]["sockets_refused"], 1,
        "{:#}",
        inv["scan"]["collectors"]["podman"]
    );
    assert!(inv["containers"].get(&fake_id[..12]).is_none());
    drop(listener);
    std::fs::remove_file(&socket).ok();
    let docker_socket = host.trim_start_matches("unix://");
    std::os::unix::fs::symlink(docker_socket, &socket).expect("symlink");
    s.scan(&config);
    let inv = s.inventory();
    assert_eq!(inv["containers"][&real]["collector"], "docker");
    assert_eq!(
        inv["scan"]["collectors"]["podman"]["ok"], false,
        "a link is no socket: none to ask"
    );
    std::fs::remove_file(&socket).ok();

    // An endless answer is cut off: the collection fails, naming the
    // socket and the limit, and the real engine's view is untouched.
    let _huge = fake_service(&socket, &list, &inspect, 64);
    let out = s.run(&config, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let inv = s.inventory();
    let report = &inv["scan"]["collectors"]["podman"];
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_answer") && e.contains("podman.sock")),
        "{report} {stderr}"
    );
    assert_eq!(inv["containers"][&real]["status"], "running");
}

//! What a stranger deploying cb runs into first: the example configuration file and systemd
//! unit in docs/deploy/, a port that is already taken, and `cbctl --server` finding the
//! daemon's token. Each runs the real binaries.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::Cbd;

/// Runs `cmd` to its end, killing it after `limit` (a cbd that did not exit is a failure
/// the test names, not a hang).
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} still ran after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A port that is taken stops cbd before it creates anything: exit 2, a sentence that names
/// the address and what to do, and no data dir (nor token) left behind.
#[test]
fn deploy_a_taken_port_exits_2_and_leaves_no_data_dir() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbd"));
    cmd.arg("--data-dir")
        .arg(&dir)
        .arg("--listen")
        .arg(addr.to_string())
        .env_remove("CBD_TOKEN");
    let out = run_bounded(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let sentence = format!("cbd: cannot listen on {addr}: Address already in use");
    assert!(stderr.contains(&sentence), "{stderr}");
    assert!(stderr.contains("give another --listen"), "{stderr}");
    assert!(
        !dir.exists(),
        "cbd created {} on a taken port",
        dir.display()
    );
    drop(taken);
}

/// A cbd started without `CBD_TOKEN`, so that it generates `DIR/token`.
struct TokenFileCbd {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    _temp: tempfile::TempDir,
}

impl TokenFileCbd {
    fn start() -> TokenFileCbd {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cbd"))
            .arg("--data-dir")
            .arg(&dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env_remove("CBD_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cbd");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("cbd: listening on http://")
                    .map(|a| a.parse().expect("address"))
            })
            .expect("cbd said where it listens");
        std::thread::spawn(move || for _ in lines {});
        TokenFileCbd {
            child,
            addr,
            dir,
            _temp: temp,
        }
    }
}

impl Drop for TokenFileCbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cbctl --server` reads the daemon's token from `--data-dir`'s token file when it is given
/// (before or after the subcommand), else from `CBD_TOKEN`; without either it says exactly
/// what to set, and exits 2.
#[test]
fn deploy_cbctl_server_finds_the_token() {
    let cbd = TokenFileCbd::start();
    let token = std::fs::read_to_string(cbd.dir.join("token")).expect("a generated token");
    let server = format!("http://{}", cbd.addr);
    let cbctl = |args: &[&str], env_token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbctl"));
        cmd.args(args)
            .env_remove("CBD_TOKEN")
            .env_remove("CBCTL_DATA_DIR")
            .env_remove("CBCTL_SERVER");
        if let Some(t) = env_token {
            cmd.env("CBD_TOKEN", t);
        }
        let out = run_bounded(cmd, Duration::from_secs(30));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = cbd.dir.to_str().unwrap();

    for args in [
        ["--server", &server, "--data-dir", dir, "status"],
        ["status", "--server", &server, "--data-dir", dir],
    ] {
        let (code, out, err) = cbctl(&args, None);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out.contains("held now: files 0"), "{args:?}: {out}");
    }
    let (code, _, err) = cbctl(&["--server", &server, "status"], Some(token.trim()));
    assert_eq!(code, Some(0), "{err}");

    // Neither: what to set, in so many words.
    let (code, out, err) = cbctl(&["--server", &server, "status"], None);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("--server needs the daemon's token: set CBD_TOKEN to it")
            && err.contains("or give --data-dir DIR, the daemon's data dir, to read DIR/token"),
        "{err}"
    );
    // A --data-dir without a token file, and no CBD_TOKEN: the file is named.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = cbctl(
        &[
            "--server",
            &server,
            "--data-dir",
            empty.path().to_str().unwrap(),
            "status",
        ],
        None,
    );
    assert_eq!(code, Some(2), "{err}");
    let file = empty.path().join("token");
    assert!(
        err.contains(&format!("{} cannot be read", file.display()))
            && err.contains("set CBD_TOKEN"),
        "{err}"
    );
    // A token the daemon does not take: which one was sent, and what to do.
    let (code, _, err) = cbctl(
        &["--server", &server, "status"],
        Some("not-the-token-0123456789"),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("refused the token from CBD_TOKEN (HTTP 401 unauthorized)"),
        "{err}"
    );
}

/// Every relative link in the README, the changelog and docs/ names a file of this
/// repository: a clone has everything its documents point to (the product contract is
/// docs/SPEC.md, not a file beside the repository).
#[test]
fn deploy_docs_link_only_to_files_in_the_repo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let mut documents = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                documents.push(path);
            }
        }
    }
    let mut broken = Vec::new();
    for doc in &documents {
        let text = std::fs::read_to_string(doc).unwrap();
        for (i, _) in text.match_indices("](") {
            let target = &text[i + 2..];
            let Some(end) = target.find(')') else {
                continue;
            };
            let target = &target[..end];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            let resolved = doc.parent().unwrap().join(file).canonicalize();
            if !resolved.is_ok_and(|p| p.starts_with(&root)) {
                broken.push(format!("{}: {target}", doc.display()));
            }
        }
    }
    assert!(documents.len() > 5, "{documents:?}");
    assert!(
        broken.is_empty(),
        "links that leave the repository or lead nowhere: {broken:#?}"
    );
}
/// A file of docs/deploy/.
fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/deploy")
        .join(name)
}

/// The example file names every key cbd's configuration file takes (set to its default, or
/// commented out with an example where the default is "none"), and the real cbd starts with
/// it as it is and with every commented-out example turned on.
#[test]
fn deploy_example_config_names_every_setting_and_cbd_starts_with_it() {
    let path = deploy_file("cbd.toml");
    let text = std::fs::read_to_string(&path).expect("docs/deploy/cbd.toml");
    let set_or_shown = |key: &str| {
        text.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    let missing: Vec<&str> = cb_cli::settings::file_keys()
        .iter()
        .copied()
        .filter(|k| !set_or_shown(k))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/deploy/cbd.toml does not name these settings: {missing:?}; add each with its \
         default (or commented out with an example) and a comment"
    );

    // As shipped. The flags Cbd::start adds (a temp data dir, port 0) beat the file's.
    let mut cbd = Cbd::start(&["--config", path.to_str().unwrap()]);
    assert_eq!(cbd.get("/healthz")["status"], "ok");
    assert!(cbd.terminate().success(), "{}", cbd.stderr());

    // Every example turned on: each is a value cbd takes. The archive dir goes to a temp
    // dir instead of /var/lib/cb.
    let temp = tempfile::tempdir().unwrap();
    let keys = cb_cli::settings::file_keys();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if keys.iter().any(|k| rest.starts_with(&format!("{k} ="))) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        uncommented.lines().filter(|l| !l.starts_with('#')).count()
            > text.lines().filter(|l| !l.starts_with('#')).count(),
        "no commented-out example was found to turn on"
    );
    // The examples that name files get real ones: a certificate and key for the API and for
    // mutual TLS, a CA to trust, a tokens file.
    let pki = crate::tls::Pki::new();
    let server = pki.server(&["localhost"]);
    let server_cert = pki.write("server.pem", &server.cert.pem());
    let server_key = pki.write("server.key", &server.key.serialize_pem());
    let (client_cert, client_key) = pki.client();
    let tokens = pki.write("tokens.toml", "");
    let real = |key: &str| -> Option<String> {
        Some(match key {
            "tls_cert" => format!("{server_cert:?}"),
            "tls_key" => format!("{server_key:?}"),
            "client_cert" => format!("{client_cert:?}"),
            "client_key" => format!("{client_key:?}"),
            "ca_file" => format!("[{:?}]", pki.ca_file()),
            "tokens_file" => format!("{tokens:?}"),
            _ => return None,
        })
    };
    let uncommented: String = uncommented
        .lines()
        .map(|l| {
            let key = l.split(" = ").next().unwrap_or_default();
            match real(key) {
                Some(value) => format!("{key} = {value}\n"),
                None => format!("{l}\n"),
            }
        })
        .collect();
    let all = temp.path().join("all.toml");
    std::fs::write(&all, uncommented).unwrap();
    let archive = temp.path().join("archive");
    let mut cbd = Cbd::start(&[
        "--config",
        all.to_str().unwrap(),
        "--archive-dir",
        archive.to_str().unwrap(),
    ]);
    // tls_cert is on: the API answers over HTTPS, with the certificate issued above.
    let agent = crate::access::https_agent(&pki.ca_file());
    let url = format!("https://localhost:{}/healthz", cbd.addr.port());
    assert_eq!(crate::access::https_get(&agent, &url), Ok(200));
    assert!(cbd.terminate().success(), "{}", cbd.stderr());
}

/// The systemd unit passes `systemd-analyze verify` with no warning (.ci/run installs
/// systemd; without systemd-analyze this test fails and says what to install), and has the
/// hardening and stop settings it promises.
#[test]
fn deploy_systemd_unit_verifies_where_systemd_analyze_is_installed() {
    let unit =
        std::fs::read_to_string(deploy_file("cbd.service")).expect("docs/deploy/cbd.service");
    for wanted in [
        "DynamicUser=yes",
        "StateDirectory=cb",
        "--data-dir /var/lib/cb",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "RestartPreventExitStatus=2",
    ] {
        assert!(unit.contains(wanted), "cbd.service lacks {wanted:?}");
    }
    // SIGHUP reloads the tokens file and the API's TLS files.
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "cbd.service lacks its reload"
    );
    let value = |key: &str| -> u64 {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("cbd.service has no numeric {key}="))
    };
    // A stop waits up to the grace for requests, then again for attempts in flight.
    assert!(value("TimeoutStopSec") > 2 * 10 + 10, "TimeoutStopSec");
    let defaults = cb_cli::settings::Settings::resolve(Default::default()).unwrap();
    assert!(
        value("LimitNOFILE") > (defaults.max_connections + defaults.max_in_flight) as u64 * 2,
        "LimitNOFILE"
    );

    let analyze = find_in_path("systemd-analyze").unwrap_or_else(|| {
        panic!(
            "systemd-analyze is not installed, so docs/deploy/cbd.service cannot be checked by \
             systemd: apt-get install systemd (.ci/run installs it)"
        )
    });
    // The unit names the installed path; verify checks that it exists and is executable,
    // so point it at the binary under test.
    let temp = tempfile::tempdir().unwrap();
    let copy = temp.path().join("cbd.service");
    let cbd = env!("CARGO_BIN_EXE_cbd");
    assert!(unit.contains("ExecStart=/usr/local/bin/cbd "), "ExecStart");
    std::fs::write(
        &copy,
        unit.replace(
            "ExecStart=/usr/local/bin/cbd ",
            &format!("ExecStart={cbd} "),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(analyze);
    cmd.arg("verify").arg(&copy);
    let out = run_bounded(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify cbd.service: {:?}\n{stderr}",
        out.status
    );
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

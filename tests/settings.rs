//! `settings::resolve`: precedence (flag > env > project file > profile file > default) as
//! tables, where the project and profile files are looked for, and bad config files.

mod support;

use std::path::{Path, PathBuf};

use mfbatch::error::ConfigError;
use mfbatch::settings::{resolve, Key, Origin, Resolved, Sources};
use support::write_file;

/// Table columns: flags, environment variables, and an expected value with its origin.
type Flags<'a> = &'a [(Key, &'a str)];
type Env<'a> = Vec<(&'a str, &'a str)>;
type Want<'a> = Option<(&'a str, Origin)>;

/// A machine: a project (with `cwd` two levels below its root) and a Metaflow home.
struct Machine {
    _dir: tempfile::TempDir,
    project: PathBuf,
    cwd: PathBuf,
    metaflow_home: PathBuf,
    home: PathBuf,
}

impl Machine {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let project = base.join("project");
        let cwd = project.join("src").join("steps");
        std::fs::create_dir_all(&cwd).unwrap();
        Machine {
            project,
            cwd,
            metaflow_home: base.join("mfhome"),
            home: base.join("home"),
            _dir: dir,
        }
    }

    fn project_file(&self, json: &str) -> PathBuf {
        let path = write_file(&self.project, ".metaflow/config.json", json);
        // Whatever the umask: only files no one else may write are read.
        set_mode(&path, 0o644);
        path
    }

    fn profile_file(&self, name: &str, json: &str) -> PathBuf {
        write_file(&self.metaflow_home, name, json)
    }

    fn sources(&self, flags: &[(Key, &str)], env: &[(&str, &str)]) -> Sources {
        Sources {
            flags: flags.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            cwd: self.cwd.clone(),
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn home_env(m: &Machine) -> String {
    m.metaflow_home.display().to_string()
}

#[test]
fn precedence_table_for_one_key() {
    const KEY: &str = "METAFLOW_BATCH_JOB_QUEUE";
    // Every combination of the four sources: the highest present one wins.
    for mask in 0u8..16 {
        let (flag, env, project, profile) =
            (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0, mask & 8 != 0);
        let m = Machine::new();
        // Each file always exists (with another key), so only the key's presence varies.
        let project_path = m.project_file(&if project {
            format!(r#"{{"{KEY}": "from-project", "METAFLOW_USER": "p"}}"#)
        } else {
            r#"{"METAFLOW_USER": "p"}"#.to_owned()
        });
        let profile_path = m.profile_file(
            "config.json",
            &if profile {
                format!(r#"{{"{KEY}": "from-profile"}}"#)
            } else {
                "{}".to_owned()
            },
        );
        let home = home_env(&m);
        let mut env_vars = vec![("METAFLOW_HOME", home.as_str())];
        if env {
            env_vars.push((KEY, "from-env"));
        }
        let flags: Vec<(Key, &str)> = if flag {
            vec![(Key::BatchJobQueue, "from-flag")]
        } else {
            vec![]
        };
        let settings = resolve(&m.sources(&flags, &env_vars)).unwrap();

        let want = if flag {
            Some(("from-flag", Origin::Flag("--queue")))
        } else if env {
            Some(("from-env", Origin::Env))
        } else if project {
            Some(("from-project", Origin::ProjectFile(project_path.clone())))
        } else if profile {
            Some(("from-profile", Origin::ProfileFile(profile_path.clone())))
        } else {
            None
        };
        let got = settings
            .resolved(Key::BatchJobQueue)
            .map(|r| (r.value.as_str(), r.origin.clone()));
        assert_eq!(
            got, want,
            "flag={flag} env={env} project={project} profile={profile}"
        );
        assert_eq!(
            settings.files_read,
            [project_path, profile_path],
            "project first"
        );
        if !(flag || env || project || profile) {
            let err = settings.require(Key::BatchJobQueue).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Missing {
                        key: KEY,
                        flag: Some("--queue")
                    }
                ),
                "{err:?}"
            );
        }
    }
}

#[test]
fn a_key_with_a_default_falls_back_to_it() {
    let m = Machine::new();
    let resolved = |flags: &[(Key, &str)], env: &[(&str, &str)]| {
        resolve(&m.sources(flags, env))
            .unwrap()
            .resolved(Key::DefaultPackageSuffixes)
            .cloned()
    };
    let cases: [(Flags, Env, Want); 3] = [
        (&[], vec![], Some((".py,.R,.RDS", Origin::Default))),
        (
            &[],
            vec![("METAFLOW_DEFAULT_PACKAGE_SUFFIXES", ".py")],
            Some((".py", Origin::Env)),
        ),
        // An empty value counts as unset and falls through.
        (
            &[],
            vec![("METAFLOW_DEFAULT_PACKAGE_SUFFIXES", " ")],
            Some((".py,.R,.RDS", Origin::Default)),
        ),
    ];
    for (flags, env, want) in cases {
        let want = want.map(|(value, origin)| Resolved {
            value: value.to_owned(),
            origin,
        });
        assert_eq!(resolved(flags, &env), want, "flags {flags:?} env {env:?}");
    }
}

#[test]
fn where_the_profile_file_is() {
    const KEY: &str = "METAFLOW_BATCH_JOB_QUEUE";
    let m = Machine::new();
    let home = m.home.display().to_string();
    let mfhome = home_env(&m);
    let under_home = |name: &str| {
        write_file(
            &m.home,
            &format!(".metaflowconfig/{name}"),
            format!(r#"{{"{KEY}": "home {name}"}}"#),
        )
    };
    let under_mfhome =
        |name: &str| m.profile_file(name, &format!(r#"{{"{KEY}": "mfhome {name}"}}"#));
    let home_default = under_home("config.json");
    let home_dev = under_home("config_dev.json");
    let mfhome_default = under_mfhome("config.json");
    let mfhome_dev = under_mfhome("config_dev.json");

    // (environment, the profile file used, the value read from it)
    let cases: [(Env, Option<(&Path, &str)>); 6] = [
        (
            vec![("HOME", &home)],
            Some((&home_default, "home config.json")),
        ),
        (
            vec![("HOME", &home), ("METAFLOW_PROFILE", "dev")],
            Some((&home_dev, "home config_dev.json")),
        ),
        (
            vec![("HOME", &home), ("METAFLOW_HOME", &mfhome)],
            Some((&mfhome_default, "mfhome config.json")),
        ),
        (
            vec![
                ("HOME", &home),
                ("METAFLOW_HOME", &mfhome),
                ("METAFLOW_PROFILE", "dev"),
            ],
            Some((&mfhome_dev, "mfhome config_dev.json")),
        ),
        (
            vec![("HOME", &home), ("METAFLOW_PROFILE", "")],
            Some((&home_default, "home config.json")),
        ),
        (vec![], None),
    ];
    for (env, want) in cases {
        let settings = resolve(&m.sources(&[], &env)).unwrap();
        let got = settings.resolved(Key::BatchJobQueue).cloned();
        let want = want.map(|(path, value)| Resolved {
            value: value.to_owned(),
            origin: Origin::ProfileFile(path.to_owned()),
        });
        assert_eq!(got, want, "env {env:?}");
    }
}

#[test]
fn an_unknown_profile_is_an_error_naming_the_file() {
    let m = Machine::new();
    m.profile_file("config.json", "{}");
    let mfhome = home_env(&m);
    let err = resolve(&m.sources(
        &[],
        &[("METAFLOW_HOME", &mfhome), ("METAFLOW_PROFILE", "nope")],
    ))
    .unwrap_err();
    match &err {
        ConfigError::UnknownProfile { profile, path } => {
            assert_eq!(profile, "nope");
            assert_eq!(*path, m.metaflow_home.join("config_nope.json"));
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(err.hint().unwrap().contains("METAFLOW_PROFILE"));
}

#[test]
fn the_nearest_project_file_wins() {
    let m = Machine::new();
    m.project_file(r#"{"METAFLOW_BATCH_JOB_QUEUE": "outer", "METAFLOW_USER": "outer"}"#);
    let inner = write_file(
        &m.project.join("src"),
        ".metaflow/config.json",
        r#"{"METAFLOW_BATCH_JOB_QUEUE": "inner"}"#,
    );
    let settings = resolve(&m.sources(&[], &[])).unwrap();
    let queue = settings.resolved(Key::BatchJobQueue).unwrap();
    assert_eq!(
        (queue.value.as_str(), &queue.origin),
        ("inner", &Origin::ProjectFile(inner.clone()))
    );
    // Only the nearest file is read: the outer one's other keys do not leak in.
    assert_eq!(settings.get(Key::User), None);
    assert_eq!(settings.files_read, [inner]);
}

#[test]
fn bad_config_files_are_errors_naming_the_file() {
    let bad_texts = ["{not json", "", "[1, 2]", "\"a string\"", "42", "null"];
    for text in bad_texts {
        // In the project file.
        let m = Machine::new();
        let path = m.project_file(text);
        let err = resolve(&m.sources(&[], &[])).unwrap_err();
        assert!(
            matches!(&err, ConfigError::BadConfigFile { path: p, .. } if *p == path),
            "project {text:?}: {err:?}"
        );

        // In the profile file.
        let m = Machine::new();
        let path = m.profile_file("config.json", text);
        let mfhome = home_env(&m);
        let err = resolve(&m.sources(&[], &[("METAFLOW_HOME", &mfhome)])).unwrap_err();
        assert!(
            matches!(&err, ConfigError::BadConfigFile { path: p, .. } if *p == path),
            "profile {text:?}: {err:?}"
        );
    }
}

#[test]
fn file_values_that_are_not_strings() {
    let m = Machine::new();
    m.project_file(
        r#"{"METAFLOW_BATCH_DEFAULT_TAGS": {"team": "ml"}, "METAFLOW_BATCH_JOB_QUEUE": null}"#,
    );
    m.profile_file(
        "config.json",
        r#"{"METAFLOW_BATCH_JOB_QUEUE": "from-profile"}"#,
    );
    let mfhome = home_env(&m);
    let settings = resolve(&m.sources(&[], &[("METAFLOW_HOME", &mfhome)])).unwrap();
    assert_eq!(
        settings.get(Key::BatchDefaultTags),
        Some(r#"{"team":"ml"}"#),
        "kept as JSON text"
    );
    assert_eq!(
        settings.get(Key::BatchJobQueue),
        Some("from-profile"),
        "null is absent"
    );
}

#[test]
fn derived_defaults_follow_the_datastore_root() {
    let m = Machine::new();
    let mfhome = home_env(&m);
    // (environment, DATATOOLS with its origin, CONDA root)
    let cases: [(Env, Want, Option<&str>); 4] = [
        (
            vec![("METAFLOW_DATASTORE_SYSROOT_S3", "s3://b/mf")],
            Some(("s3://b/mf/data", Origin::Default)),
            Some("s3://b/mf/conda"),
        ),
        (
            vec![("METAFLOW_DATASTORE_SYSROOT_S3", "s3://b/mf/")],
            Some(("s3://b/mf/data", Origin::Default)),
            Some("s3://b/mf/conda"),
        ),
        (
            vec![
                ("METAFLOW_DATASTORE_SYSROOT_S3", "s3://b/mf"),
                ("METAFLOW_DATATOOLS_S3ROOT", "s3://other/tools"),
            ],
            Some(("s3://other/tools", Origin::Env)),
            Some("s3://b/mf/conda"),
        ),
        (vec![], None, None),
    ];
    for (mut env, datatools, conda) in cases {
        env.push(("METAFLOW_HOME", &mfhome));
        let settings = resolve(&m.sources(&[], &env)).unwrap();
        let got = settings
            .resolved(Key::DatatoolsS3Root)
            .map(|r| (r.value.as_str(), r.origin.clone()));
        assert_eq!(got, datatools, "env {env:?}");
        assert_eq!(settings.get(Key::CondaPackageS3Root), conda, "env {env:?}");
    }

    // A root from the profile file derives the same way.
    let path = m.profile_file(
        "config.json",
        r#"{"METAFLOW_DATASTORE_SYSROOT_S3": "s3://p/root"}"#,
    );
    let settings = resolve(&m.sources(&[], &[("METAFLOW_HOME", &mfhome)])).unwrap();
    assert_eq!(
        settings.resolved(Key::DatastoreSysrootS3).unwrap().origin,
        Origin::ProfileFile(path)
    );
    assert_eq!(settings.get(Key::DatatoolsS3Root), Some("s3://p/root/data"));
}

#[test]
fn user_defaults_to_the_login_name() {
    let m = Machine::new();
    let cases: [(&[(&str, &str)], Want); 4] = [
        (&[("USER", "alice")], Some(("alice", Origin::Default))),
        (&[("LOGNAME", "bob")], Some(("bob", Origin::Default))),
        (
            &[("USER", "alice"), ("METAFLOW_USER", "carol")],
            Some(("carol", Origin::Env)),
        ),
        (&[], None),
    ];
    for (env, want) in cases {
        let settings = resolve(&m.sources(&[], env)).unwrap();
        let got = settings
            .resolved(Key::User)
            .map(|r| (r.value.as_str(), r.origin.clone()));
        assert_eq!(got, want, "env {env:?}");
    }
}

#[test]
fn the_project_file_search_stops_at_the_repository_root_and_home() {
    // A file above the repository root (a shared directory, say) is not the project's.
    let m = Machine::new();
    let above = write_file(
        m.project.parent().unwrap(),
        ".metaflow/config.json",
        r#"{"METAFLOW_BATCH_CONTAINER_IMAGE": "evil/image"}"#,
    );
    set_mode(&above, 0o644);
    std::fs::create_dir(m.project.join(".git")).unwrap();
    let settings = resolve(&m.sources(&[], &[])).unwrap();
    assert_eq!(settings.get(Key::BatchContainerImage), None);
    assert!(settings.files_read.is_empty(), "{:?}", settings.files_read);

    // The repository root's own file is the project file.
    let own = m.project_file(r#"{"METAFLOW_BATCH_CONTAINER_IMAGE": "mine"}"#);
    let settings = resolve(&m.sources(&[], &[])).unwrap();
    assert_eq!(settings.get(Key::BatchContainerImage), Some("mine"));
    assert_eq!(settings.files_read, std::slice::from_ref(&own));
    std::fs::remove_file(own).unwrap();

    // Without a repository, the search stops at $HOME (HOME's own file still counts).
    std::fs::remove_dir(m.project.join(".git")).unwrap();
    let home = m.project.join("src");
    let home_text = home.display().to_string();
    let settings = resolve(&m.sources(&[], &[("HOME", &home_text)])).unwrap();
    assert_eq!(settings.get(Key::BatchContainerImage), None);
    let in_home = write_file(&home, ".metaflow/config.json", r#"{"METAFLOW_USER": "h"}"#);
    set_mode(&in_home, 0o600);
    let settings = resolve(&m.sources(&[], &[("HOME", &home_text)])).unwrap();
    assert_eq!(settings.get(Key::User), Some("h"));
    assert_eq!(settings.files_read, [in_home]);
}

#[test]
fn a_project_file_others_may_write_is_ignored_with_a_reason() {
    for mode in [0o666, 0o664, 0o646] {
        let m = Machine::new();
        let path = m.project_file(r#"{"METAFLOW_BATCH_CONTAINER_IMAGE": "evil/image"}"#);
        set_mode(&path, mode);
        let settings = resolve(&m.sources(&[], &[])).unwrap();
        assert_eq!(
            settings.get(Key::BatchContainerImage),
            None,
            "mode {mode:o}"
        );
        assert!(settings.files_read.is_empty());
        assert_eq!(settings.ignored_files.len(), 1);
        assert_eq!(settings.ignored_files[0].path, path);
        assert!(
            settings.ignored_files[0]
                .reason
                .contains("writable by others"),
            "{:?}",
            settings.ignored_files
        );
    }
}

#[test]
fn a_project_file_someone_else_owns_is_ignored() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can give a file to another user");
        return;
    }
    let m = Machine::new();
    let path = m.project_file(r#"{"METAFLOW_S3_ENDPOINT_URL": "https://evil.example.com"}"#);
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let settings = resolve(&m.sources(&[], &[])).unwrap();
    assert_eq!(settings.get(Key::S3EndpointUrl), None);
    assert!(settings.ignored_files[0]
        .reason
        .contains("owned by uid 65534"));
}

#[test]
fn tuning_values_outside_their_range_are_errors_naming_the_variable() {
    let m = Machine::new();
    for (key, value) in [
        ("MFBATCH_POLL_MIN_MS", "60000"),
        ("MFBATCH_POLL_MIN_MS", "18446744073709551615"),
        ("MFBATCH_POLL_MIN_MS", "0"),
        ("MFBATCH_DRAIN_QUIET_MS", "99999999999999"),
        ("MFBATCH_DRAIN_QUIET_MS", "0"),
        ("MFBATCH_DRAIN_QUIET_MS", "-1"),
    ] {
        let err = resolve(&m.sources(&[], &[(key, value)])).unwrap_err();
        assert!(
            matches!(&err, ConfigError::InvalidSetting { key: k, .. } if *k == key),
            "{key}={value}: {err:?}"
        );
    }
    let settings = resolve(&m.sources(
        &[],
        &[
            ("MFBATCH_POLL_MIN_MS", "5000"),
            ("MFBATCH_DRAIN_QUIET_MS", "20"),
        ],
    ))
    .unwrap();
    assert_eq!(
        settings.millis(Key::PollMinMs).unwrap(),
        Some(std::time::Duration::from_secs(5))
    );
}

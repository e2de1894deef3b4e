//! PostgreSQL restore of one schema in one transaction: drop the schema,
//! run the pre-data DDL, `COPY ... FROM STDIN` every table (before indexes,
//! constraints and triggers exist, so triggers do not fire), set sequences,
//! run the post-data DDL, refresh materialized views, commit. A failure or a
//! kill at any moment rolls everything back: the old state stays.

use sqlx::postgres::PgConnection;
use sqlx::Row;

use std::collections::{BTreeSet, HashMap, HashSet};

use super::copy_binary::{Converter, Kind, Unconvertible};
use super::rename::rename_schema;
use super::script::{read_sql, Extension, Grants, Script};
use super::snapshot::{Inside, SchemaGrant};
use super::sql::{classify, exec, names_in_schema, quote_ident, Server};
use super::waits;
use crate::config::EngineKind;
use crate::error::{BlockedWork, Error, Result};
use crate::mask::copy_text::RowMasker;
use crate::restore::{LiveSessions, Privileges, RestoreStats};
use crate::snapshot::manifest::EngineInfo;
use crate::snapshot::stream::ObjectStream;
use crate::snapshot::{Found, ObjectEntry, ObjectKind};
use crate::storage::Storage;

/// The major version in a `server_version` text (`17.2 (Debian …)` → 17).
fn major_of(version: &str) -> Option<u32> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
}

/// Session settings the server knows: lines of pg_dump's script that set
/// others (a newer pg_dump writes `SET transaction_timeout = 0;`, which
/// PostgreSQL 16 and older reject) are left out when it is replayed.
async fn known_settings(conn: &mut PgConnection, what: &str) -> Result<HashSet<String>> {
    let rows = sqlx::query("SELECT name FROM pg_settings")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| classify(what, e))?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

/// Drops `SET name = value;` lines whose setting the server does not have.
pub fn fit_settings(sql: &str, known: &HashSet<String>) -> String {
    sql.lines()
        .filter(|line| {
            let Some(rest) = line.strip_prefix("SET ") else {
                return true;
            };
            let name = rest.split([' ', '=']).next().unwrap_or_default();
            known.contains(name) || !line.trim_end().ends_with(';')
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Objects outside the schema that depend on it would be dropped by the
/// restore; valero-db changes nothing outside the service, so it refuses.
async fn outside_dependents(
    conn: &mut PgConnection,
    schema: &str,
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT DISTINCT v.oid::regclass::text FROM pg_depend d \
         JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid \
         JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace \
         JOIN pg_class t ON d.refclassid = 'pg_class'::regclass AND t.oid = d.refobjid \
         JOIN pg_namespace tn ON tn.oid = t.relnamespace \
         WHERE tn.nspname = $1 AND vn.nspname <> $1 \
         UNION \
         SELECT DISTINCT s.oid::regclass::text FROM pg_constraint c \
         JOIN pg_class t ON t.oid = c.confrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
         JOIN pg_class s ON s.oid = c.conrelid JOIN pg_namespace sn ON sn.oid = s.relnamespace \
         WHERE c.contype = 'f' AND tn.nspname = $1 AND sn.nspname <> $1",
    )
    .bind(schema)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

/// Types and extensions the snapshot needs from outside the schema.
async fn missing_requirements(
    conn: &mut PgConnection,
    info: &EngineInfo,
    inside: &Inside,
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let mut missing = Vec::new();
    let Some(reqs) = info.position.get("requires").and_then(|r| r.as_array()) else {
        return Ok(missing);
    };
    let recreated = |name: &str| inside.extensions.iter().any(|e| e.name == name);
    for r in reqs {
        if let Some(ext) = r.get("extension").and_then(|e| e.as_str()) {
            if recreated(ext) {
                continue;
            }
            let ok: bool =
                sqlx::query("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1)")
                    .bind(ext)
                    .fetch_one(&mut *conn)
                    .await?
                    .get(0);
            if !ok {
                missing.push(format!("extension {ext}"));
            }
        } else if let (Some(s), Some(t)) = (
            r.get("type_schema").and_then(|v| v.as_str()),
            r.get("type").and_then(|v| v.as_str()),
        ) {
            let ok: bool =
                sqlx::query("SELECT to_regtype(format('%I.%I', $1::text, $2::text)) IS NOT NULL")
                    .bind(s)
                    .bind(t)
                    .fetch_one(&mut *conn)
                    .await?
                    .get(0);
            if !ok {
                missing.push(format!("type {s}.{t}"));
            }
        }
    }
    Ok(missing)
}

/// The snapshot's DDL as this restore runs it: read (and verified) before
/// anything changes, roles renamed or privileges left out, the schema's
/// extensions created right after the schema.
pub struct Ddl {
    pre: Option<String>,
    post: Option<String>,
    inside: Inside,
    grants: Grants,
    role_map: std::collections::BTreeMap<String, String>,
}

/// Checks what can be checked before the transaction starts and reads the
/// DDL; called before `prepare`. Every refusal here is exit 2 with nothing
/// changed.
pub async fn preflight(
    conn: &mut PgConnection,
    storage: &dyn Storage,
    found: &Found,
    target: Target<'_>,
    info: &EngineInfo,
    privileges: &Privileges,
) -> Result<Ddl> {
    let Target {
        service,
        schema,
        server,
    } = target;
    let what = format!("PostgreSQL of service {service}");
    let server_version = &server.version;
    let snapshot_major = major_of(&info.server_version);
    if snapshot_major.is_some_and(|m| m > server.major()) {
        return Err(Error::usage_hint(
            format!(
                "service {service}: the snapshot was taken on PostgreSQL {}, the target server runs {server_version}; a snapshot restores into the same major version or a newer one",
                info.server_version
            ),
            format!(
                "restore into a PostgreSQL {} server or newer; nothing was changed",
                snapshot_major.unwrap_or_default()
            ),
        ));
    }
    let deps = outside_dependents(conn, schema)
        .await
        .map_err(|e| classify(&what, e))?;
    if !deps.is_empty() {
        return Err(Error::usage_hint(
            format!("service {service}: objects outside schema {schema} depend on it: {}", deps.join(", ")),
            "valero-db changes nothing outside the service's schema; remove or redefine those objects first",
        ));
    }
    let inside = Inside::recorded(&info.position);
    let missing = missing_requirements(conn, info, &inside)
        .await
        .map_err(|e| classify(&what, e))?;
    if !missing.is_empty() {
        return Err(Error::usage_hint(
            format!(
                "service {service}: the snapshot needs {} which this database lacks",
                missing.join(", ")
            ),
            "create them first (e.g. CREATE EXTENSION), then restore again",
        ));
    }
    check_extensions(conn, &what, service, schema, &inside.extensions).await?;
    let settings = known_settings(conn, &what).await?;
    let read = |kind| read_script(storage, found, kind, &settings);
    let grants = if privileges.skip {
        Grants::Skip
    } else {
        Grants::Keep
    };
    // Another environment's schema may have another name: its DDL runs
    // under this one's.
    let renamed = |sql: Option<String>| sql.map(|t| rename_schema(&t, &info.target, schema));
    let ddl = Ddl {
        pre: renamed(read(ObjectKind::PostgresPreData).await?),
        post: renamed(read(ObjectKind::PostgresPostData).await?),
        inside,
        grants,
        role_map: privileges.role_map.clone(),
    };
    if grants == Grants::Keep {
        check_roles(conn, &what, service, &ddl).await?;
    }
    Ok(ddl)
}

/// Where a restore goes: the service, its schema, the server.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub service: &'a str,
    pub schema: &'a str,
    pub server: &'a Server,
}

/// Each extension the snapshot recreates in the schema must be available
/// on this server at its version, and not installed in another schema
/// (a database holds an extension once).
async fn check_extensions(
    conn: &mut PgConnection,
    what: &str,
    service: &str,
    schema: &str,
    extensions: &[Extension],
) -> Result<()> {
    let mut problems = Vec::new();
    for e in extensions {
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extension_versions WHERE name = $1 AND version = $2), \
                    (SELECT n.nspname::text FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace \
                     WHERE x.extname = $1 AND n.nspname <> $3)",
        )
        .bind(&e.name)
        .bind(&e.version)
        .bind(schema)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| classify(what, err))?;
        let available: bool = row.get(0);
        let elsewhere: Option<String> = row.get(1);
        if !available {
            problems.push(format!(
                "extension {} {} is not available on this server",
                e.name, e.version
            ));
        } else if let Some(other) = elsewhere {
            problems.push(format!(
                "extension {} is installed in schema {other} of this database, the snapshot has it in schema {schema}",
                e.name
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::usage_hint(
        format!(
            "service {service}: the snapshot's schema holds extensions this database cannot take: {}; nothing was changed",
            problems.join("; ")
        ),
        "install the extension's files at that version on the server (pg_available_extension_versions lists them), or move the other installation; then restore again",
    ))
}

/// Every role the snapshot's ownership and privileges name (after the
/// environment's role_map) must exist here, and the restoring role must be
/// allowed to make each owner one: checked before anything changes.
async fn check_roles(conn: &mut PgConnection, what: &str, service: &str, ddl: &Ddl) -> Result<()> {
    let mut owners = std::collections::BTreeSet::new();
    let mut named = std::collections::BTreeSet::new();
    for text in [&ddl.pre, &ddl.post].into_iter().flatten() {
        let roles = Script::parse(text).roles();
        owners.extend(roles.owners);
        named.extend(roles.named);
    }
    for g in ddl.inside.schema_acl.iter().flatten() {
        if g.grantee != "PUBLIC" {
            named.insert(g.grantee.clone());
        }
    }
    let named: Vec<String> = named.iter().map(|r| ddl.mapped(r)).collect();
    let owners: Vec<String> = owners.iter().map(|r| ddl.mapped(r)).collect();
    let row = sqlx::query(
        "SELECT (SELECT coalesce(array_agg(r ORDER BY r), '{}') FROM unnest($1::text[]) r \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)), \
                (SELECT coalesce(array_agg(r ORDER BY r), '{}') FROM unnest($2::text[]) r \
                 WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \
                   AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                   AND NOT pg_has_role(current_user, r, 'MEMBER')), \
                current_user::text",
    )
    .bind(&named)
    .bind(&owners)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| classify(what, e))?;
    let missing: Vec<String> = row.get(0);
    let not_settable: Vec<String> = row.get(1);
    let me: String = row.get(2);
    if !missing.is_empty() {
        return Err(Error::usage_hint(
            format!(
                "service {service}: the snapshot's owners and privileges name roles this server lacks: {}; nothing was changed",
                missing.join(", ")
            ),
            "create those roles, map them to this environment's roles with role_map = { \"snapshot_role\" = \"role_here\" } in the environment's configuration, or restore without ownership and privileges with --skip-privileges",
        ));
    }
    if !not_settable.is_empty() {
        return Err(Error::usage_hint(
            format!(
                "service {service}: role {me} restores, but may not make {} the owner of the snapshot's objects (it is neither superuser nor a member); nothing was changed",
                not_settable.join(", ")
            ),
            format!(
                "GRANT {} TO {me}, map the owners with role_map, or restore with --skip-privileges (every object is then owned by {me})",
                not_settable.join(", ")
            ),
        ));
    }
    Ok(())
}

/// A SQL object of the snapshot of `kind`, if it has one, without the
/// settings this server lacks (see `read_sql`).
async fn read_script(
    storage: &dyn Storage,
    found: &Found,
    kind: ObjectKind,
    settings: &HashSet<String>,
) -> Result<Option<String>> {
    let Some(entry) = found.manifest.objects.iter().find(|o| o.kind == kind) else {
        return Ok(None);
    };
    let sql = read_sql(storage, found, entry).await?;
    Ok(Some(fit_settings(&sql, settings)))
}

impl Ddl {
    /// A script reshaped for this restore; the pre-data one also creates
    /// the schema's extensions.
    fn shaped(&self, text: &str, schema: Option<&str>) -> String {
        let mut script = Script::parse(text);
        script.reshape(self.grants, &self.role_map);
        if let Some(schema) = schema {
            script.create_extensions_after_schema(schema, &self.inside.extensions);
        }
        script.text()
    }

    /// The schema's ACL as the snapshot recorded it, grantees mapped; None
    /// when it is not restored (skipped, or not recorded).
    fn schema_acl(&self) -> Option<Vec<SchemaGrant>> {
        if self.grants == Grants::Skip {
            return None;
        }
        let recorded = self.inside.schema_acl.as_ref()?;
        Some(
            recorded
                .iter()
                .map(|g| SchemaGrant {
                    grantee: self.mapped(&g.grantee),
                    ..g.clone()
                })
                .collect(),
        )
    }

    /// The role standing here for a role the snapshot names (`role_map`).
    fn mapped(&self, role: &str) -> String {
        self.role_map
            .get(role)
            .map_or_else(|| role.to_string(), String::clone)
    }
}

/// Phase one: everything inside an open transaction. The caller commits
/// with `commit` or rolls back with `abort`.
pub async fn prepare(
    conn: &mut PgConnection,
    storage: &dyn Storage,
    found: &Found,
    info: &EngineInfo,
    service: &str,
    schema: &str,
    around: Around<'_>,
) -> Result<RestoreStats> {
    let Around {
        replay,
        live,
        ddl,
        masking,
    } = around;
    let what = format!("PostgreSQL of service {service}");
    exec(conn, "BEGIN").await.map_err(|e| classify(&what, e))?;
    let loaded = async {
        let terminated = take_locks(conn, service, schema, live).await?;
        let source = Source {
            storage,
            found,
            what: &what,
            masking,
            rename: (&info.target, schema),
        };
        let mut stats = load(conn, &source, info, schema, replay, &ddl).await?;
        stats.terminated_sessions = terminated;
        Ok(stats)
    }
    .await;
    if loaded.is_err() {
        abort(conn).await;
    }
    loaded
}

/// What a restore does around loading the snapshot: the captured changes
/// it replays after, and how it deals with live sessions before.
pub struct Around<'a> {
    pub replay: Option<&'a crate::capture::ReplayPlan>,
    pub live: LiveSessions,
    pub ddl: Ddl,
    /// Rules applied to the rows while they stream in (a masked refresh).
    pub masking: Option<&'a crate::mask::Masking>,
}

/// Every relation of the schema `LOCK TABLE` accepts: tables, partitioned
/// tables, views and foreign tables (not materialized views; a view's lock
/// extends to the tables it reads).
async fn relations_of(conn: &mut PgConnection, what: &str, schema: &str) -> Result<Vec<String>> {
    let sql = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'f') ORDER BY c.oid";
    names_in_schema(conn, what, sql, schema).await
}

/// Takes ACCESS EXCLUSIVE locks on every relation of the schema before
/// anything is dropped. Each attempt waits at most `LiveSessions::ATTEMPT`
/// (`lock_timeout`), so the application's queries never queue behind the
/// restore for longer; between attempts nothing is queued. Sessions that
/// hold locks are named while waiting and in the error when `--lock-timeout`
/// runs out (exit 4, nothing changed); with `--terminate-sessions` they are
/// ended instead, and their descriptions returned.
async fn take_locks(
    conn: &mut PgConnection,
    service: &str,
    schema: &str,
    live: LiveSessions,
) -> Result<Vec<String>> {
    let what = format!("PostgreSQL of service {service}");
    let relations = relations_of(conn, &what, schema).await?;
    if relations.is_empty() {
        return Ok(Vec::new());
    }
    let lock = format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        relations.join(", ")
    );
    let deadline = std::time::Instant::now() + live.wait;
    let mut terminated = Vec::new();
    let mut waiting: Option<crate::progress::Waiting> = None;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let attempt = LiveSessions::ATTEMPT
            .min(left)
            .max(std::time::Duration::from_millis(10));
        exec(
            conn,
            &format!(
                "SAVEPOINT valero_locks; SET LOCAL lock_timeout = '{}ms'",
                attempt.as_millis()
            ),
        )
        .await
        .map_err(|e| classify(&what, e))?;
        let got = exec(conn, &lock).await;
        match got {
            Ok(()) => {
                exec(
                    conn,
                    "RELEASE SAVEPOINT valero_locks; SET LOCAL lock_timeout = 0",
                )
                .await
                .map_err(|e| classify(&what, e))?;
                return Ok(terminated);
            }
            Err(e) if super::sql::is_lock_timeout(&e) => {
                exec(conn, "ROLLBACK TO SAVEPOINT valero_locks")
                    .await
                    .map_err(|e| classify(&what, e))?;
            }
            Err(e) => return Err(sql_failed(&what, "the locks on the schema", e)),
        }
        let blockers = waits::holding_locks_in(conn, &what, schema).await?;
        // Never another valero-db run's session: it is named, not ended.
        let others: Vec<&waits::Blocker> = blockers.iter().filter(|b| !b.valero_db).collect();
        if live.terminate && !others.is_empty() {
            for b in others {
                tracing::warn!(
                    "{service}: terminating the session that holds or waits for a lock on schema {schema}: {}",
                    b.description
                );
                let _ = sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(b.pid)
                    .execute(&mut *conn)
                    .await;
                terminated.push(b.description.clone());
            }
            continue;
        }
        let held_by = waits::describe_all(&blockers);
        if std::time::Instant::now() >= deadline {
            return Err(Error::Blocked {
                what: format!("{what}: the restore of schema {schema}"),
                timeout: crate::units::format_duration(live.wait),
                sessions: held_by,
                work: BlockedWork::Restore,
            });
        }
        waiting
            .get_or_insert_with(crate::progress::Waiting::new)
            .say(&format!(
                "{service}: waiting for the locks on schema {schema}, held by {held_by}"
            ));
        let pause = std::time::Duration::from_millis(500)
            .min(deadline.saturating_duration_since(std::time::Instant::now()));
        tokio::time::sleep(pause).await;
    }
}

pub async fn commit(conn: &mut PgConnection, service: &str) -> Result<()> {
    let what = format!("PostgreSQL of service {service}");
    let r = exec(conn, "COMMIT")
        .await
        .map_err(|e| sql_failed(&what, "commit", e));
    // pg_dump's script empties search_path for the session.
    let _ = exec(conn, "RESET search_path").await;
    r
}

pub async fn abort(conn: &mut PgConnection) {
    let _ = exec(conn, "ROLLBACK").await;
    let _ = exec(conn, "RESET search_path").await;
}

/// A statement of the restore failed: the transaction is rolled back, so
/// nothing changed; a lost connection is exit 3 like any other.
fn sql_failed(what: &str, step: &str, e: sqlx::Error) -> Error {
    match classify(what, e) {
        Error::Database {
            what,
            class,
            message,
            sqlstate,
        } => Error::Database {
            what,
            class,
            message: format!(
                "restoring {step} failed: {message}; the transaction was rolled back, nothing changed"
            ),
            sqlstate,
        },
        other => other,
    }
}

/// Loads the snapshot into the open transaction: drop the old schema,
/// pre-data DDL, tables, sequences, post-data DDL, replay, publications,
/// materialized views.
async fn load(
    conn: &mut PgConnection,
    source: &Source<'_>,
    info: &EngineInfo,
    schema: &str,
    replay: Option<&crate::capture::ReplayPlan>,
    ddl: &Ddl,
) -> Result<RestoreStats> {
    let mut stats = RestoreStats::new(EngineKind::Postgres);
    let (found, what) = (source.found, source.what);
    mark_as_restore(conn, found, what, schema).await?;
    let publications = publications_of(conn, what, schema).await?;
    let mut clock = std::time::Instant::now();
    let mut lap = |step: &str| {
        tracing::debug!("{what}: {step} took {:.2?}", clock.elapsed());
        clock = std::time::Instant::now();
    };
    exec(
        conn,
        &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)),
    )
    .await
    .map_err(|e| sql_failed(what, "the old schema (drop)", e))?;
    lap("dropping the old schema");
    let exists = info
        .position
        .get("schema_exists")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    if !exists {
        return Ok(stats);
    }
    let pre = ddl.pre.as_deref().ok_or_else(|| {
        Error::integrity(format!("snapshot {}: no pre-data object", found.base), None)
    })?;
    run_ddl(conn, what, &ddl.shaped(pre, Some(schema)), "pre-data DDL").await?;
    if let Some(acl) = ddl.schema_acl() {
        restore_schema_acl(conn, what, schema, &acl).await?;
    }
    stats.objects += 1;
    lap("pre-data DDL");

    load_tables(conn, source, schema, ddl, &mut stats, &mut lap).await?;

    if let Some(seq) = source.object(ObjectKind::PostgresSequences) {
        source.run_sql(conn, seq, "sequences").await?;
        stats.objects += 1;
    }
    if let Some(post) = ddl.post.as_deref() {
        run_ddl(conn, what, &ddl.shaped(post, None), "post-data DDL").await?;
        stats.objects += 1;
        lap("post-data DDL (indexes, constraints, triggers)");
    }
    if let Some(plan) = replay {
        let replayed = replay_changes(conn, source, info, plan, schema).await?;
        lap(&format!(
            "replaying {} captured transactions",
            replayed.transactions
        ));
        stats.replayed = Some(replayed);
    }
    // Dropping the schema removed it from capture's publications: add the
    // new one back in this transaction, so no later change is missed.
    for publication in &publications {
        super::capture::ensure_publication(conn, publication, schema)
            .await
            .map_err(|e| sql_failed(what, "the capture publication", e))?;
    }
    refresh_views(conn, what, schema, &ddl.inside.unpopulated_views).await?;
    Ok(stats)
}

async fn run_ddl(conn: &mut PgConnection, what: &str, sql: &str, step: &str) -> Result<()> {
    if sql.trim().is_empty() {
        return Ok(());
    }
    exec(conn, sql).await.map_err(|e| sql_failed(what, step, e))
}

/// Gives the schema the ACL the snapshot recorded: pg_dump leaves out what
/// matches the ACL initdb gave `public`, which a recreated schema lacks.
/// Revokes what the snapshot does not have, grants what it has.
async fn restore_schema_acl(
    conn: &mut PgConnection,
    what: &str,
    schema: &str,
    wanted: &[SchemaGrant],
) -> Result<()> {
    let now: BTreeSet<SchemaGrant> = SchemaGrant::of_schema(conn, schema, true)
        .await
        .map_err(|e| classify(what, e))?
        .into_iter()
        .collect();
    let wanted: BTreeSet<SchemaGrant> = wanted.iter().cloned().collect();
    let mut sql = String::new();
    for g in now.difference(&wanted) {
        sql.push_str(&format!(
            "REVOKE {} ON SCHEMA {} FROM {};\n",
            g.privilege,
            quote_ident(schema),
            g.grantee_sql()
        ));
    }
    for g in wanted.difference(&now) {
        sql.push_str(&format!(
            "GRANT {} ON SCHEMA {} TO {}{};\n",
            g.privilege,
            quote_ident(schema),
            g.grantee_sql(),
            if g.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        ));
    }
    run_ddl(conn, what, &sql, "the schema's privileges").await
}

/// The snapshot being restored: where its objects are read from.
struct Source<'a> {
    storage: &'a dyn Storage,
    found: &'a Found,
    what: &'a str,
    masking: Option<&'a crate::mask::Masking>,
    /// The snapshot's schema name and the restored one's.
    rename: (&'a str, &'a str),
}

impl Source<'_> {
    fn object(&self, kind: ObjectKind) -> Option<&ObjectEntry> {
        self.found.manifest.objects.iter().find(|o| o.kind == kind)
    }

    /// Reads a SQL object (verified while it streams) and runs it.
    async fn run_sql(
        &self,
        conn: &mut PgConnection,
        entry: &ObjectEntry,
        step: &str,
    ) -> Result<()> {
        let sql = read_sql(self.storage, self.found, entry).await?;
        let sql = rename_schema(&sql, self.rename.0, self.rename.1);
        run_ddl(conn, self.what, &sql, step).await
    }
}

/// With logical decoding on, marks this transaction as a restore, so
/// capture and replay can tell it from the service's own changes.
async fn mark_as_restore(
    conn: &mut PgConnection,
    found: &Found,
    what: &str,
    schema: &str,
) -> Result<()> {
    let logical: bool = sqlx::query("SELECT current_setting('wal_level') = 'logical'")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| classify(what, e))?
        .get(0);
    if !logical {
        return Ok(());
    }
    let message = super::capture::restore_message(&found.manifest.id, schema);
    exec(
        conn,
        &format!(
            "SELECT pg_logical_emit_message(true, '{}', {})",
            super::capture::RESTORE_MESSAGE_PREFIX,
            super::sql::quote_literal(&message)
        ),
    )
    .await
    .map_err(|e| classify(what, e))
}

/// The publications the schema belongs to (capture's), which dropping the
/// schema leaves without it.
async fn publications_of(conn: &mut PgConnection, what: &str, schema: &str) -> Result<Vec<String>> {
    // Schema publications (and their catalog) exist from PostgreSQL 15 on;
    // capture is refused on 14, so there is nothing to keep.
    let has_catalog: bool =
        sqlx::query("SELECT to_regclass('pg_catalog.pg_publication_namespace') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| classify(what, e))?
            .get(0);
    if !has_catalog {
        return Ok(Vec::new());
    }
    let sql = "SELECT p.pubname::text FROM pg_publication p JOIN pg_publication_namespace pn ON pn.pnpubid = p.oid \
         JOIN pg_namespace n ON n.oid = pn.pnnspid WHERE n.nspname = $1";
    names_in_schema(conn, what, sql, schema).await
}

/// COPYs every table of the snapshot: as binary where every column
/// converts, else (or when a value does not) as text.
async fn load_tables(
    conn: &mut PgConnection,
    source: &Source<'_>,
    schema: &str,
    ddl: &Ddl,
    stats: &mut RestoreStats,
    lap: &mut impl FnMut(&str),
) -> Result<()> {
    let (found, what) = (source.found, source.what);
    let progress = std::sync::Arc::new(crate::progress::Progress::bytes(format!(
        "{} postgres: restore",
        found.manifest.service
    )));
    let mut kinds = column_kinds(conn, schema)
        .await
        .map_err(|e| classify(what, e))?;
    let mut masks = match source.masking {
        Some(m) => super::masking::plan(
            m,
            &found.manifest.service,
            ddl.pre.as_deref().unwrap_or_default(),
            ddl.post.as_deref(),
        )?,
        None => Default::default(),
    };
    let tables = found.manifest.objects.iter();
    for entry in tables.filter(|o| o.kind == ObjectKind::PostgresTable) {
        let table = entry.name.as_deref().ok_or_else(|| {
            Error::integrity(
                format!(
                    "snapshot {}: table object {} has no name",
                    found.base, entry.key
                ),
                None,
            )
        })?;
        let mut target = Table {
            storage: source.storage,
            base: &found.base,
            entry,
            name: table,
            qualified: format!("{}.{}", quote_ident(schema), quote_ident(table)),
            what,
            progress: &progress,
            mask: source.masking.and_then(|m| {
                let plan = masks.remove(table)?;
                plan.masks().then(|| RowMasker::new(plan, m.key.clone()))
            }),
        };
        let loaded = match kinds.remove(table) {
            Some(kinds) => target.load_binary(conn, kinds).await?,
            None => None,
        };
        let (format, (rows, bytes)) = match loaded {
            Some(done) => ("binary", done),
            None => ("text", target.load_text(conn).await?),
        };
        stats.rows += rows;
        stats.bytes += bytes;
        stats.objects += 1;
        lap(&format!("COPY {table} (as {format})"));
    }
    Ok(())
}

/// Replays the captured changes committed after the snapshot up to the
/// plan's time, skipping every transaction the snapshot already holds.
async fn replay_changes(
    conn: &mut PgConnection,
    source: &Source<'_>,
    info: &EngineInfo,
    plan: &crate::capture::ReplayPlan,
    schema: &str,
) -> Result<crate::capture::ReplayStats> {
    let position = info
        .position
        .get("transaction_snapshot")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            Error::integrity(
                format!(
                    "snapshot {} does not record its transaction snapshot",
                    source.found.base
                ),
                None,
            )
        })?;
    let names = super::capture::ReplayNames {
        schema,
        source: &info.target,
    };
    super::capture::replay(
        conn,
        source.storage,
        plan,
        names,
        position,
        source.what,
        source.masking,
    )
    .await
}

/// Materialized views were created WITH NO DATA; those the snapshot had
/// populated are refreshed from the restored data (as pg_restore does),
/// in creation order, which is dependency order. Those it had unpopulated
/// stay so.
async fn refresh_views(
    conn: &mut PgConnection,
    what: &str,
    schema: &str,
    unpopulated: &[String],
) -> Result<()> {
    let sql =
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'm' ORDER BY c.oid";
    let views = names_in_schema(conn, what, sql, schema).await?;
    for name in views.iter().filter(|v| !unpopulated.contains(v)) {
        let v = format!("{}.{}", quote_ident(schema), quote_ident(name));
        exec(conn, &format!("REFRESH MATERIALIZED VIEW {v}"))
            .await
            .map_err(|e| sql_failed(what, &v, e))?;
    }
    Ok(())
}

/// Per table, the kinds of its COPY columns when every one converts to
/// binary (see `copy_binary`); other tables are absent.
async fn column_kinds(
    conn: &mut PgConnection,
    schema: &str,
) -> std::result::Result<HashMap<String, Vec<Kind>>, sqlx::Error> {
    // COPY without a column list: every live, non-generated column in order.
    let rows = sqlx::query(
        "SELECT c.relname::text, array_agg(a.atttypid::int8 ORDER BY a.attnum) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
         WHERE n.nspname = $1 AND c.relkind = 'r' GROUP BY c.relname",
    )
    .bind(schema)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let oids: Vec<i64> = r.get(1);
            let kinds: Option<Vec<Kind>> = oids
                .iter()
                .map(|o| u32::try_from(*o).ok().and_then(Kind::from_oid))
                .collect();
            Some((r.get::<String, _>(0), kinds?))
        })
        .collect())
}

/// One table's rows on their way from the snapshot into the new schema.
struct Table<'a> {
    storage: &'a dyn Storage,
    base: &'a str,
    entry: &'a ObjectEntry,
    name: &'a str,
    qualified: String,
    what: &'a str,
    progress: &'a std::sync::Arc<crate::progress::Progress>,
    /// The masker of a masked refresh, when a column of the table is masked.
    mask: Option<RowMasker>,
}

/// A table's stored COPY text, masked on the way when the refresh masks.
struct Rows {
    stream: ObjectStream,
    masker: Option<RowMasker>,
    table: String,
}

impl Rows {
    async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(masker) = &mut self.masker else {
            return self.stream.next().await;
        };
        loop {
            let Some(buf) = self.stream.next().await? else {
                masker.finish().map_err(|e| unreadable(&self.table, e))?;
                return Ok(None);
            };
            let mut out = Vec::with_capacity(buf.len() + buf.len() / 4);
            masker
                .push(&buf, &mut out)
                .map_err(|e| unreadable(&self.table, e))?;
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }
}

/// A row the masker cannot read is damaged data (exit 5); a value its
/// transformer refuses ends the refresh as a rule that does not fit
/// (exit 2). Either way the transaction rolls back: nothing changed.
fn unreadable(table: &str, e: crate::mask::copy_text::BadRow) -> Error {
    use crate::mask::copy_text::BadRow;
    match e {
        BadRow::Shape { .. } => Error::integrity(format!("masking table {table}: {e}"), None),
        BadRow::Refused { .. } => Error::usage_hint(
            format!("masking table {table}: {e}; nothing was changed"),
            "change the column's rule (see docs/masking.md for what each transformer accepts)",
        ),
    }
}

impl Table<'_> {
    async fn open(&mut self) -> Result<Rows> {
        let stream = ObjectStream::open(self.storage, self.base, self.entry)
            .await?
            .with_progress(self.progress);
        Ok(Rows {
            stream,
            // A second opening (text after a failed binary load) starts
            // the masker afresh.
            masker: self.mask.as_ref().map(RowMasker::fresh),
            table: self.name.to_string(),
        })
    }

    /// The stored text as it is: answers (rows, bytes).
    async fn load_text(&mut self, conn: &mut PgConnection) -> Result<(u64, u64)> {
        let mut stream = self.open().await?;
        let mut copy = conn
            .copy_in_raw(&format!("COPY {} FROM STDIN", self.qualified))
            .await
            .map_err(|e| sql_failed(self.what, self.name, e))?;
        let (mut rows, mut bytes) = (0, 0);
        let sent: Result<()> = async {
            while let Some(buf) = stream.next().await? {
                rows += newlines(&buf);
                bytes += buf.len() as u64;
                copy.send(buf)
                    .await
                    .map_err(|e| sql_failed(self.what, self.name, e))?;
            }
            Ok(())
        }
        .await;
        match sent {
            Ok(()) => {
                copy.finish()
                    .await
                    .map_err(|e| sql_failed(self.what, self.name, e))?;
                Ok((rows, bytes))
            }
            Err(e) => {
                let _ = copy.abort("valero-db: restore failed").await;
                Err(e)
            }
        }
    }

    /// Converted to COPY binary on a blocking thread while the server
    /// loads. Answers None, with the table back as it was (a savepoint),
    /// when a value does not convert: the caller then loads the text.
    async fn load_binary(
        &mut self,
        conn: &mut PgConnection,
        kinds: Vec<Kind>,
    ) -> Result<Option<(u64, u64)>> {
        let savepoint = |verb: &str| format!("{verb} valero_binary_copy");
        exec(conn, &savepoint("SAVEPOINT"))
            .await
            .map_err(|e| sql_failed(self.what, self.name, e))?;
        let mut stream = self.open().await?;
        let mut copy = conn
            .copy_in_raw(&format!(
                "COPY {} FROM STDIN (FORMAT binary)",
                self.qualified
            ))
            .await
            .map_err(|e| sql_failed(self.what, self.name, e))?;
        let (text_tx, mut text_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let (binary_tx, mut binary_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let converter = tokio::task::spawn_blocking(move || {
            let mut converter = Converter::new(kinds);
            while let Some(text) = text_rx.blocking_recv() {
                let mut out = Vec::with_capacity(text.len() + text.len() / 2);
                converter.push(&text, &mut out)?;
                if binary_tx.blocking_send(out).is_err() {
                    // The sender failed; its error is the one reported.
                    return Ok(converter.rows());
                }
            }
            let mut out = Vec::new();
            converter.finish(&mut out)?;
            let _ = binary_tx.blocking_send(out);
            Ok::<u64, Unconvertible>(converter.rows())
        });
        let mut bytes = 0;
        let read = async {
            while let Some(buf) = stream.next().await? {
                bytes += buf.len() as u64;
                if text_tx.send(buf).await.is_err() {
                    break;
                }
            }
            drop(text_tx);
            Ok::<(), Error>(())
        };
        let send = async {
            while let Some(buf) = binary_rx.recv().await {
                copy.send(buf)
                    .await
                    .map_err(|e| sql_failed(self.what, self.name, e))?;
            }
            Ok::<(), Error>(())
        };
        let (read, sent) = tokio::join!(read, send);
        let converted = converter
            .await
            .map_err(|e| Error::internal(format!("the COPY converter stopped: {e}")))?;
        match (read, sent, converted) {
            (Err(e), _, _) | (_, Err(e), _) => {
                let _ = copy.abort("valero-db: restore failed").await;
                Err(e)
            }
            (Ok(()), Ok(()), Ok(rows)) => {
                copy.finish()
                    .await
                    .map_err(|e| sql_failed(self.what, self.name, e))?;
                exec(conn, &savepoint("RELEASE SAVEPOINT"))
                    .await
                    .map_err(|e| sql_failed(self.what, self.name, e))?;
                Ok(Some((rows, bytes)))
            }
            (Ok(()), Ok(()), Err(why)) => {
                let _ = copy.abort("valero-db: loading as text instead").await;
                tracing::debug!(
                    "{}: table {} loads as COPY text: {why}",
                    self.what,
                    self.name
                );
                exec(conn, &savepoint("ROLLBACK TO SAVEPOINT"))
                    .await
                    .map_err(|e| sql_failed(self.what, self.name, e))?;
                Ok(None)
            }
        }
    }
}

fn newlines(buf: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', buf).count() as u64
}

#[cfg(test)]
mod tests {
    use super::{fit_settings, major_of};
    use std::collections::HashSet;

    #[test]
    fn settings_the_server_lacks_are_left_out_of_the_script() {
        let known: HashSet<String> = ["statement_timeout", "search_path"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let script = "SET statement_timeout = 0;\nSET transaction_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\nCREATE TABLE t (\"SET x\" int);";
        assert_eq!(
            fit_settings(script, &known),
            "SET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\nCREATE TABLE t (\"SET x\" int);"
        );
    }

    #[test]
    fn major_versions_are_read_from_server_version_texts() {
        assert_eq!(major_of("17.2"), Some(17));
        assert_eq!(major_of("15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(major_of("18beta1"), Some(18));
        assert_eq!(major_of("unknown"), None);
    }
}

//! Releases of a small priced catalogue for the deploy tests: v1 creates
//! it, v2 changes its data (so a rollback must bring the data back), and
//! `state` is what a test compares before and after.

use super::{psql, Project};

pub fn v1(p: &Project) {
    p.migration("postgres", "0001_prices.up.sql", "CREATE TABLE prices (sku text PRIMARY KEY, cents int NOT NULL);\nINSERT INTO prices VALUES ('a', 100), ('b', 250);\n");
    p.migration("postgres", "0001_prices.down.sql", "DROP TABLE prices;\n");
}

/// A migration that changes data, so a rollback must bring the data back.
pub fn v2(p: &Project) {
    p.migration("postgres", "0002_euro.up.sql", "ALTER TABLE prices ADD COLUMN currency text NOT NULL DEFAULT 'EUR';\nUPDATE prices SET cents = cents * 2;\n");
    p.migration(
        "postgres",
        "0002_euro.down.sql",
        "ALTER TABLE prices DROP COLUMN currency;\nUPDATE prices SET cents = cents / 2;\n",
    );
}

/// Release v1.0.0 deployed, v2's migration waiting; the state at v1.
pub fn v1_deployed_then_v2_pending(p: &Project) -> String {
    v1(p);
    p.run(&["deploy", "--release", "v1.0.0", "--", "true"]).ok();
    let before = state(p);
    v2(p);
    before
}

pub fn state(p: &Project) -> String {
    psql(&format!(
        "SELECT (SELECT string_agg(version::text, ',' ORDER BY version) FROM \"{s}\".valero_schema_history) || ' | ' || \
                (SELECT string_agg(sku || '=' || cents, ',' ORDER BY sku) FROM \"{s}\".prices) || ' | ' || \
                (SELECT count(*) FROM information_schema.columns WHERE table_schema = '{s}' AND table_name = 'prices')",
        s = p.schema
    ))
}

//! A database of its own per test, migrated, dropped afterwards (shared by
//! the worker's integration tests).

#![allow(clippy::unwrap_used, dead_code)]

use las_worker::adapters::db::Store;
use sqlx::PgPool;

pub const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct Db {
    pub name: String,
    pub pool: PgPool,
}

impl Db {
    /// Creates `<prefix>_<random>` and applies the migrations.
    pub async fn new(prefix: &str) -> Db {
        let name = format!(
            "{prefix}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = PgPool::connect(ADMIN).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {ADMIN}: {e}; start it and run the tests again")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let pool = PgPool::connect(&Self::url_of(&name)).await.unwrap();
        Store::from_pool(pool.clone()).migrate().await.unwrap();
        Db { name, pool }
    }

    fn url_of(name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{name}")
    }

    pub fn url(&self) -> String {
        Self::url_of(&self.name)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                ADMIN,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

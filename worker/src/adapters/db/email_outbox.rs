//! The e-mail outbox: claimed, sent, retried or given up by the dispatcher.

use std::time::Duration;

use sqlx::Postgres;
use uuid::Uuid;

use super::*;

/// An e-mail claimed from the outbox for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxEmail {
    pub id: i64,
    pub to_address: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub idempotency_key: Uuid,
    pub attempts: i32,
}

impl Store {
    /// Claims due e-mails: pending ones whose time has come, and ones another
    /// dispatcher claimed but cannot finish: its database session is gone
    /// (its process died, so it is taken over at once) or, as a fallback, its
    /// lease ran out. `SKIP LOCKED` lets replicas share the outbox.
    ///
    /// The claim runs on `session`, a connection the dispatcher keeps for as
    /// long as it lives: its backend pid marks the claims as alive. It is
    /// taken from the pool when empty and dropped after an error.
    pub async fn claim_emails(
        &self,
        session: &mut Option<sqlx::pool::PoolConnection<Postgres>>,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<OutboxEmail>, StoreError> {
        let conn = match session {
            Some(conn) => conn,
            None => session.insert(self.pool.acquire().await.map_err(classify)?),
        };
        let claimed = sqlx::query_as(
            "UPDATE email_outbox SET status = 'sending', attempts = attempts + 1,
                    claimed_until = now() + make_interval(secs => $2),
                    claimed_by_pid = pg_backend_pid()
             WHERE id IN (
                 SELECT id FROM email_outbox e
                 WHERE (status = 'pending' AND next_attempt_at <= now())
                    OR (status = 'sending' AND (claimed_until < now()
                        OR (claimed_by_pid IS NOT NULL AND NOT EXISTS
                            (SELECT 1 FROM pg_stat_activity a WHERE a.pid = e.claimed_by_pid))))
                 ORDER BY next_attempt_at, id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, to_address, subject, body_text, body_html, idempotency_key, attempts",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&mut **conn)
        .await;
        if claimed.is_err() {
            *session = None;
        }
        Ok(claimed?)
    }

    pub async fn email_sent(&self, id: i64, provider_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE email_outbox SET status = 'sent', sent_at = now(), provider_message_id = $2,
                    claimed_until = NULL, claimed_by_pid = NULL, last_error = NULL
             WHERE id = $1",
        )
        .bind(id)
        .bind(provider_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn email_retry(
        &self,
        id: i64,
        delay: Duration,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE email_outbox SET status = 'pending', claimed_until = NULL, claimed_by_pid = NULL, last_error = $3,
                    next_attempt_at = now() + make_interval(secs => $2)
             WHERE id = $1 AND status = 'sending'",
        )
        .bind(id)
        .bind(delay.as_secs_f64())
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn email_failed(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE email_outbox SET status = 'failed', claimed_until = NULL, claimed_by_pid = NULL, last_error = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// E-mails waiting to be sent (pending or being sent).
    /// Seconds since the oldest e-mail still waiting in the outbox was
    /// queued (0 when none waits): a stuck outbox that does not grow shows
    /// here (issue #16).
    pub async fn email_outbox_oldest_seconds(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::int8
             FROM email_outbox WHERE status IN ('pending', 'sending')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Seconds since the oldest unpublished sync event was written (0 when
    /// none waits).
    pub async fn event_outbox_oldest_seconds(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::int8
             FROM event_outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Unpublished sync events (as `las_event_outbox_depth` counts them).
    pub async fn event_outbox_depth(&self) -> Result<i64, StoreError> {
        super::event_outbox::depth(&self.pool).await
    }

    /// Unix time of the daily job's last successful run, any replica's
    /// (`daily_jobs.last_run_at`); `None` before the first.
    pub async fn daily_job_last_success(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM max(last_run_at))::int8 FROM daily_jobs")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn outbox_depth(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM email_outbox WHERE status IN ('pending', 'sending')",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}

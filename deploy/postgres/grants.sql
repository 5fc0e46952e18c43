-- Grants on the tables themselves: run as miniflow_owner after every `miniflow db upgrade`
-- (it is idempotent), e.g.
--   psql -v ON_ERROR_STOP=1 -h DB_HOST -U miniflow_owner -d miniflow -f deploy/postgres/grants.sql
-- tests/deploy/test_postgres_roles.py runs roles.sql, the migrations and this file on the
-- real server, then a DAG with the scheduler and its workers connected as these roles.

-- The scheduler: every table (the default privileges of roles.sql cover new ones; this
-- line covers tables made before they were set).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO miniflow_scheduler;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO miniflow_scheduler;
-- The schema's version is the migrations' to write; the scheduler only checks it.
REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM miniflow_scheduler;

-- The worker (miniflow_worker): what a try needs to run, and nothing more.
--   read   the run and the DAG version it was created with (dag_run, dag, dag_version),
--          its task instance and its upstream tasks' results (task_instance)
--   claim  state, heartbeat_at, started_at       (task_instances.worker_claim)
--   live   heartbeat_at                           (task_instances.heartbeat)
--   end    state, exit_code, error, next_retry_at, ended_at, result
--                                                 (task_instances.finish)
--   skip   state, ended_at of waiting tasks of its run, after a branch or short-circuit
--                                                 (task_instances.skip_waiting)
--   poke   first_poke_at; a sensor's "not yet": state, next_retry_at, ended_at,
--          exit_code, error and max_tries (a poke never uses up a retry)
--                                                 (task_instances.start_poking, reschedule)
--   xcom   its pushed values (insert or replace its own keys), the run's values
--                                                 (store.xcom.push, load)
--   values variables and connections its code or templates read (store.config_values)
-- No DELETE, no other column (the try number, the handle, the attempts: the scheduler's),
-- no other table.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM miniflow_worker;
GRANT SELECT ON dag, dag_version, dag_run, task_instance, xcom, variable, connection
    TO miniflow_worker;
GRANT UPDATE (state, heartbeat_at, started_at, exit_code, error, next_retry_at, ended_at, result,
              first_poke_at, max_tries)
    ON task_instance TO miniflow_worker;
GRANT INSERT, UPDATE (value, at) ON xcom TO miniflow_worker;
GRANT USAGE ON SEQUENCE xcom_id_seq TO miniflow_worker;

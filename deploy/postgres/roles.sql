-- miniflow's PostgreSQL roles: least privilege for each kind of connection.
-- Run once, as a superuser (or a role with CREATEROLE and CREATEDB), e.g.
--   psql -v ON_ERROR_STOP=1 -h DB_HOST -U postgres -f deploy/postgres/roles.sql
-- then set each password outside any file: psql's \password miniflow_owner (and so on).
-- After every `miniflow db upgrade` run grants.sql as miniflow_owner.
--
--   miniflow_owner      owns the database and the schema: runs the migrations (the
--                       miniflow-migrate Job, Secret miniflow-db-owner). Nothing else
--                       connects as the owner.
--   miniflow_scheduler  every scheduler (Secret miniflow-db-scheduler) and `miniflow`
--                       commands: reads and writes every table, cannot change the schema.
--                       All schedulers share this role: one ends a frozen peer's
--                       connection (pg_terminate_backend), allowed within one role only.
--   miniflow_worker     worker pods (Secret miniflow-db-worker, MINIFLOW_DATABASE_SECRET):
--                       reads what a try needs and updates only the columns of its own
--                       task_instance row that a worker writes (grants.sql).

CREATE ROLE miniflow_owner LOGIN;
CREATE ROLE miniflow_scheduler LOGIN;
CREATE ROLE miniflow_worker LOGIN;

CREATE DATABASE miniflow OWNER miniflow_owner;
REVOKE ALL ON DATABASE miniflow FROM PUBLIC;
GRANT CONNECT ON DATABASE miniflow TO miniflow_scheduler;
GRANT CONNECT ON DATABASE miniflow TO miniflow_worker;

-- In the new database (psql: \connect miniflow), the public schema belongs to its
-- owner; the other roles may use it but never create in it.
\connect miniflow
ALTER SCHEMA public OWNER TO miniflow_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO miniflow_scheduler, miniflow_worker;

-- Every table and sequence the owner's migrations create is the scheduler's to read and
-- write, without a grant per release.
ALTER DEFAULT PRIVILEGES FOR ROLE miniflow_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO miniflow_scheduler;
ALTER DEFAULT PRIVILEGES FOR ROLE miniflow_owner IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO miniflow_scheduler;

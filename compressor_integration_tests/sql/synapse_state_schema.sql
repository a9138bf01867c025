-- The state tables of a Synapse database (PostgreSQL), as Synapse itself
-- creates them: tables, indexes, sequences and planner settings. Only the
-- tables the state compressor reads or must leave alone are here.
--
-- Used by scripts/pg-throwaway.sh (loaded into the `synapse_template`
-- database the tests clone), by the test harness when that template is
-- missing, and by docker-compose.yaml (run once by the postgres image's
-- entrypoint). Load it into an empty UTF8 database with C collation:
--
--     psql -v ON_ERROR_STOP=1 DBNAME < synapse_state_schema.sql

-- Ids of new state groups.
CREATE SEQUENCE state_group_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

-- One row per state group: its room and the event that created it.
CREATE TABLE state_groups (
    id BIGINT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL
);

CREATE INDEX state_groups_room_id_idx ON state_groups (room_id);

-- The rows of a group: its full state (a snapshot, when it has no edge) or
-- its delta on its predecessor.
CREATE TABLE state_groups_state (
    state_group BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL
);

-- Not unique, and there is deliberately no index on room_id.
CREATE INDEX state_groups_state_type_idx
    ON state_groups_state (state_group, type, state_key);

-- Synapse pins the planner's estimate of distinct groups (2% of the rows).
ALTER TABLE state_groups_state ALTER COLUMN state_group SET (n_distinct = -0.02);

-- A group's predecessor (at most one per group, always a lower id).
CREATE TABLE state_group_edges (
    state_group BIGINT NOT NULL,
    prev_state_group BIGINT NOT NULL
);

CREATE UNIQUE INDEX state_group_edges_unique_idx
    ON state_group_edges (state_group, prev_state_group);

CREATE INDEX state_group_edges_prev_idx ON state_group_edges (prev_state_group);

-- Since Synapse 1.124 (schema 89): groups queued for deletion and groups
-- being persisted right now.
CREATE TABLE state_groups_pending_deletion (
    sequence_number BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state_group BIGINT NOT NULL,
    insertion_ts BIGINT NOT NULL
);

CREATE UNIQUE INDEX state_groups_pending_deletion_state_group
    ON state_groups_pending_deletion (state_group);

CREATE INDEX state_groups_pending_deletion_insertion_ts
    ON state_groups_pending_deletion (insertion_ts);

CREATE TABLE state_groups_persisting (
    state_group BIGINT NOT NULL,
    instance_name TEXT NOT NULL,
    inserted_ts BIGINT NOT NULL DEFAULT (EXTRACT(epoch FROM now()) * 1000),
    PRIMARY KEY (state_group, instance_name)
);

CREATE INDEX state_groups_persisting_instance_name
    ON state_groups_persisting (instance_name);

-- Lives in the main database; in a single-database deployment (the usual
-- one) it sits beside the state tables.
CREATE TABLE event_to_state_groups (
    event_id TEXT NOT NULL UNIQUE,
    state_group BIGINT NOT NULL
);

CREATE INDEX event_to_state_groups_sg_index ON event_to_state_groups (state_group);

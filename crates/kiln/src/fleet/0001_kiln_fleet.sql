-- kiln fleet store, migration 0001: the tables a fleet of kiln instances
-- shares. kiln runs this itself, once, the first time an instance finds
-- schema kiln_fleet without it (under an advisory lock, so that instances
-- starting together create it once), and logs that it did.
--
-- A fleet (a name: many fleets may share these tables) has immutable
-- versions of one TOML document and a desired pointer to one of them; each
-- instance reports what it applied in its own row. A change is published by
-- inserting a version and moving the pointer with a compare-and-swap, in the
-- transaction that also sends pg_notify('kiln_fleet', 'FLEET:VERSION'): the
-- notification is only a hint, the tables are the truth.

CREATE SCHEMA IF NOT EXISTS kiln_fleet;

-- Every document ever published, never updated nor deleted by kiln.
CREATE TABLE IF NOT EXISTS kiln_fleet.versions (
    id          bigserial   PRIMARY KEY,
    fleet       text        NOT NULL,
    document    text        NOT NULL,              -- TOML laid over each instance's own file
    sha256      text        NOT NULL,              -- hex digest of document
    author      text        NOT NULL,
    message     text        NOT NULL DEFAULT '',
    parent      bigint      REFERENCES kiln_fleet.versions (id),  -- the version it was made from
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS versions_fleet_id ON kiln_fleet.versions (fleet, id);

-- The version every instance of the fleet should run.
CREATE TABLE IF NOT EXISTS kiln_fleet.desired (
    fleet       text        PRIMARY KEY,
    version     bigint      NOT NULL REFERENCES kiln_fleet.versions (id),
    rollout     jsonb,                             -- reserved for canary rollouts
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per instance: ACK (state 'applied'), NACK ('rejected', with the
-- error), or 'applying'. Heartbeats update heartbeat_at only, and never
-- notify.
CREATE TABLE IF NOT EXISTS kiln_fleet.instances (
    fleet         text        NOT NULL,
    instance      text        NOT NULL,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    applied       bigint,                          -- the version it serves (NULL: none yet)
    generation    bigint      NOT NULL,            -- its kiln generation serving it
    state         text        NOT NULL CHECK (state IN ('applying', 'applied', 'rejected')),
    version       bigint,                          -- the version the state is about
    error         text,                            -- why it was rejected
    error_key     text,                            -- the key at fault, when one is
    at            timestamptz NOT NULL,            -- when the state last changed
    PRIMARY KEY (fleet, instance)
);

-- Users, roles and their assignment. Passwords are stored as hashes only.
CREATE TABLE roles (
    role_name    text PRIMARY KEY,
    description  text NOT NULL DEFAULT ''
);

CREATE TABLE users (
    user_id        uuid PRIMARY KEY,
    login          text NOT NULL UNIQUE CHECK (login = lower(login)),
    password_hash  text NOT NULL,
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_roles (
    user_id    uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    role_name  text NOT NULL REFERENCES roles,
    PRIMARY KEY (user_id, role_name)
);

INSERT INTO roles (role_name, description) VALUES
    ('admin', 'Full access'),
    ('accountant', 'fibu: post and read journal'),
    ('cashier', 'kasse: issue receipts'),
    ('analyst', 'bi: read reports');

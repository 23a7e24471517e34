-- The booking app's database (a small version of it), with the rows of the last good release.
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, tenant_id text NOT NULL);
CREATE TABLE appointments (
  id int PRIMARY KEY, user_id int NOT NULL REFERENCES users, starts_at timestamptz NOT NULL,
  service text NOT NULL);
CREATE TABLE calendar_connections (
  id int PRIMARY KEY, user_id int NOT NULL REFERENCES users, provider text NOT NULL,
  access_token text, refresh_token text, token_expires_at timestamptz);
INSERT INTO users SELECT g, 'client' || g || '@example.com', 'instyle' FROM generate_series(1, 120) g;
INSERT INTO appointments SELECT g, 1 + g % 120, timestamptz '2026-11-30 09:00Z' + g * interval '30 min',
  (ARRAY['cut', 'colour', 'styling'])[1 + g % 3] FROM generate_series(1, 400) g;
INSERT INTO calendar_connections SELECT g, g, CASE WHEN g % 3 = 0 THEN 'microsoft' ELSE 'google' END,
  md5('access' || g), md5('refresh' || g), now() + interval '1 hour' FROM generate_series(1, 120) g;

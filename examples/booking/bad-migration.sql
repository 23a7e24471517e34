-- Release 2.4.0's migration: it "normalises" appointment times and rewrites every token with the
-- broken callback's grants. Bookings made after the nightly backup arrive too.
UPDATE appointments SET starts_at = starts_at + interval '2 hours' WHERE id % 2 = 0;
UPDATE calendar_connections SET access_token = 'broken-' || id, refresh_token = NULL;
INSERT INTO appointments SELECT g, 1 + g % 120, now() + g * interval '1 hour', 'cut'
  FROM generate_series(401, 412) g;

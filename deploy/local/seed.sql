-- Demo data for the campaign sample that `make run` posts
-- (deploy/samples/campaign-batch.json). deploy/run.sh loads it after
-- deploy/services.sh start has applied the migrations; every row is
-- inserted with ON CONFLICT DO NOTHING, so loading it again changes nothing.

INSERT INTO leads (id, workspace_id, name, phone, email, tags, attributes, deleted_at)
VALUES
    ('demo-lead-ana',  'demo-ws', 'Ana',  '+15550100001', 'ana@example.com',
     '{vip}', '{"city": "Lisbon"}', NULL),
    ('demo-lead-bo',   'demo-ws', 'Bo',   '+15550100002', 'bo@example.com',
     '{}', '{}', NULL),
    -- Deleted: its message fails with lead_deleted.
    ('demo-lead-gone', 'demo-ws', 'Cleo', '+15550100003', 'cleo@example.com',
     '{}', '{}', '2025-01-01T00:00:00Z')
ON CONFLICT (id) DO NOTHING;

INSERT INTO inboxes (id, workspace_id, name, connected)
VALUES ('demo-inbox', 'demo-ws', 'Demo inbox', true)
ON CONFLICT (id) DO NOTHING;

-- The demo's customers, inserted through RegionGuard (which encrypts email and
-- full_name); generated from src/demo/schema.rs.
INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('acme', 1, 'anna.schmidt@acme.example', 'Anna Schmidt') ON CONFLICT DO NOTHING;
INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('acme', 2, 'luc.martin@acme.example', 'Luc Martin') ON CONFLICT DO NOTHING;
INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('acme', 3, 'sofia.rossi@acme.example', 'Sofia Rossi') ON CONFLICT DO NOTHING;
INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('globex', 1, 'hank.scorpio@globex.example', 'Hank Scorpio') ON CONFLICT DO NOTHING;
INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('globex', 2, 'homer.simpson@globex.example', 'Homer Simpson') ON CONFLICT DO NOTHING;
INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('globex', 3, 'frank.grimes@globex.example', 'Frank Grimes') ON CONFLICT DO NOTHING;
INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('initech', 1, 'peter.gibbons@initech.example', 'Peter Gibbons') ON CONFLICT DO NOTHING;
INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('initech', 2, 'milton.waddams@initech.example', 'Milton Waddams') ON CONFLICT DO NOTHING;
INSERT INTO customers (tenant_id, id, email, full_name) VALUES ('initech', 3, 'samir.n@initech.example', 'Samir Nagheenanajar') ON CONFLICT DO NOTHING;

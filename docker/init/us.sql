-- The demo's schema and tenant data for region us; generated from
-- src/demo/schema.rs (REGEN_DOCKER_INIT=1 cargo nextest run --test docker_files).

-- The role is named like RegionGuard's own schema: without this, what the
-- application creates through the proxy would land in that schema.
ALTER ROLE regionguard SET search_path = public;

CREATE TABLE IF NOT EXISTS customers (
    tenant_id text NOT NULL,
    id bigint,
    email bytea,
    full_name bytea,
    created_at timestamptz DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE IF NOT EXISTS orders (
    tenant_id text NOT NULL,
    id bigint,
    customer_id bigint,
    amount numeric(12,2),
    status text,
    created_at timestamptz,
    PRIMARY KEY (tenant_id, id)
);
INSERT INTO orders (tenant_id, id, customer_id, amount, status, created_at) VALUES ('globex', 1, 1, 9999.99, 'paid', now() - interval '30 days') ON CONFLICT DO NOTHING;
INSERT INTO orders (tenant_id, id, customer_id, amount, status, created_at) VALUES ('globex', 2, 2, 12.00, 'refunded', now() - interval '8 days') ON CONFLICT DO NOTHING;
INSERT INTO orders (tenant_id, id, customer_id, amount, status, created_at) VALUES ('globex', 3, 2, 64.75, 'shipped', now() - interval '2 days') ON CONFLICT DO NOTHING;
INSERT INTO orders (tenant_id, id, customer_id, amount, status, created_at) VALUES ('globex', 4, 3, 250.00, 'pending', now() - interval '1 days') ON CONFLICT DO NOTHING;

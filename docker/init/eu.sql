-- The demo's schema and tenant data for region eu; generated from
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
INSERT INTO orders (tenant_id, id, customer_id, amount, status, created_at) VALUES ('acme', 1, 1, 129.90, 'paid', now() - interval '12 days') ON CONFLICT DO NOTHING;
INSERT INTO orders (tenant_id, id, customer_id, amount, status, created_at) VALUES ('acme', 2, 1, 45.00, 'shipped', now() - interval '5 days') ON CONFLICT DO NOTHING;
INSERT INTO orders (tenant_id, id, customer_id, amount, status, created_at) VALUES ('acme', 3, 2, 310.25, 'paid', now() - interval '3 days') ON CONFLICT DO NOTHING;
INSERT INTO orders (tenant_id, id, customer_id, amount, status, created_at) VALUES ('acme', 4, 3, 18.50, 'pending', now() - interval '0 days') ON CONFLICT DO NOTHING;

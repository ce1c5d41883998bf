-- Ferry ledger, version 15: the masking key in a vault of its own.
--
-- Masked values are '***' plus 8 hex digits of HMAC-SHA-256(key, value): ferry.mask() is the
-- one definition, computed in the database for SQL and Python alike, so the key never
-- travels in statement text, pg_stat_activity or the server log (it used to, as a literal
-- in every chunk statement with rules). Only the HMAC pads are stored (key XOR ipad/opad),
-- in a table nobody but the ledger's owner may read; ferry.mask() runs as that owner.
-- A missing key is an error, never a constant fallback.

CREATE TABLE ferry.mask_secret (
    id   integer PRIMARY KEY CHECK (id = 1),
    ipad bytea NOT NULL CHECK (length(ipad) = 64),
    opad bytea NOT NULL CHECK (length(opad) = 64)
);
REVOKE ALL ON ferry.mask_secret FROM PUBLIC;

-- RFC 2104 with SHA-256 (block of 64 bytes): a longer key is hashed first, a shorter one
-- padded with zero bytes.
CREATE FUNCTION ferry.set_mask_key(key bytea) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    k bytea := key;
    ip bytea;
    op bytea;
BEGIN
    IF key IS NULL OR length(key) < 16 THEN
        RAISE EXCEPTION 'a masking key needs at least 16 bytes' USING ERRCODE = '22023';
    END IF;
    IF length(k) > 64 THEN
        k := sha256(k);
    END IF;
    k := k || decode(repeat('00', 64 - length(k)), 'hex');
    ip := k;
    op := k;
    FOR i IN 0..63 LOOP
        ip := set_byte(ip, i, get_byte(k, i) # 54);   -- 0x36
        op := set_byte(op, i, get_byte(k, i) # 92);   -- 0x5c
    END LOOP;
    INSERT INTO ferry.mask_secret (id, ipad, opad) VALUES (1, ip, op)
    ON CONFLICT (id) DO UPDATE SET ipad = EXCLUDED.ipad, opad = EXCLUDED.opad;
END
$$;
REVOKE ALL ON FUNCTION ferry.set_mask_key(bytea) FROM PUBLIC;

-- The key a ledger had keeps masking as before; a new ledger's key is made here, from the
-- server's strong random source (gen_random_uuid), and never leaves the database.
SELECT ferry.set_mask_key(coalesce(
    (SELECT convert_to(value, 'UTF8') FROM ferry.meta WHERE key = 'mask_key'),
    sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                      || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8'))));
DELETE FROM ferry.meta WHERE key = 'mask_key';

CREATE FUNCTION ferry.mask(value text) RETURNS text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog
AS $$
DECLARE
    s record;
BEGIN
    SELECT ipad, opad INTO s FROM ferry.mask_secret WHERE id = 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the masking key is missing: run ferry init' USING ERRCODE = '55000';
    END IF;
    RETURN '***' || left(encode(sha256(s.opad || sha256(s.ipad || convert_to(value, 'UTF8'))),
                                'hex'), 8);
END
$$;
-- EXECUTE is granted by `ferry init --roles` to the roles that read patient data anyway
-- (coordinator, worker): to any other, the function would be an oracle for brute force.
REVOKE ALL ON FUNCTION ferry.mask(text) FROM PUBLIC;

-- Ferry ledger, version 7: encryption at rest of pre-images and raw quarantined values.
-- Optional: used only by runs launched with FERRY_ENCRYPTION_KEY (workers.encryption).
-- pgcrypto is installed when the server ships it (a trusted extension since PostgreSQL 13);
-- without it the ledger works as before and an encrypted run fails with a clear message.
-- The key is never stored nor written in SQL text: every connection carries it as the
-- session setting ferry.encryption_key, and runs keep only its fingerprint.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgcrypto') THEN
    BEGIN
      CREATE EXTENSION pgcrypto SCHEMA ferry;
    EXCEPTION WHEN OTHERS THEN
      RAISE NOTICE 'pgcrypto is not available: FERRY_ENCRYPTION_KEY cannot be used here';
    END;
  END IF;
END $$;

-- The connection's key, refused when missing or not the run's (same fingerprint as
-- workers.encryption.fingerprint). Errors are data exceptions: the chunk fails, not retried.
CREATE OR REPLACE FUNCTION ferry.encryption_key(fingerprint text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, ferry, public, extensions AS $$
DECLARE
  k text := current_setting('ferry.encryption_key', true);
BEGIN
  IF k IS NULL OR k = '' THEN
    RAISE EXCEPTION 'this run is encrypted: set FERRY_ENCRYPTION_KEY for every worker and command'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF left(encode(digest('ferry-key|' || k, 'sha256'), 'hex'), 16) <> fingerprint THEN
    RAISE EXCEPTION 'FERRY_ENCRYPTION_KEY is not the key this run was encrypted with'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN k;
END $$;

CREATE OR REPLACE FUNCTION ferry.seal(value text, k text) RETURNS bytea
LANGUAGE plpgsql STRICT VOLATILE
SET search_path = pg_catalog, ferry, public, extensions AS $$
BEGIN
  RETURN pgp_sym_encrypt(value, k, 'cipher-algo=aes256, s2k-mode=1');
END $$;

CREATE OR REPLACE FUNCTION ferry.unseal(value bytea, k text) RETURNS text
LANGUAGE plpgsql STRICT STABLE
SET search_path = pg_catalog, ferry, public, extensions AS $$
BEGIN
  RETURN pgp_sym_decrypt(value, k);
END $$;

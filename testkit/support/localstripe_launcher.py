#!/usr/bin/env python3
"""Start localstripe (PyPI 1.15.x), patched so async-stripe 1.0.0-rc.10 can parse its answers.

Usage: python3 localstripe_launcher.py PORT [HOST]    (HOST defaults to 127.0.0.1)

async-stripe 1.0 (Stripe API 2026-09-30) deserializes strictly: a missing non-optional
field or a value of the wrong shape fails the whole response. localstripe models an older
API, so this launcher wraps its `_export` functions (the JSON each resource returns, which
its webhook events reuse) and a few handlers before starting its aiohttp server. It always
starts from an empty store and never writes the pickle localstripe keeps in /tmp.
"""

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import secrets
import socket
import sys
import urllib.parse

import aiohttp
from aiohttp import web

from localstripe import resources as R
from localstripe import server, webhooks
from localstripe.errors import UserError

# --------------------------------------------------------------------------------------
# Persistence: localstripe pickles the whole store to /tmp/localstripe.pickle on every
# insert (slow as the store grows, and shared between instances running in parallel).
R.Store.dump_to_disk = lambda self: None
R.Store.try_load_from_disk = lambda self: None

BILLING_KEYS = ('address', 'email', 'name', 'phone', 'tax_id')


def _billing_details(raw):
    # Stripe always returns every billing_details key, null when unknown.
    raw = raw if isinstance(raw, dict) else {}
    return {k: raw.get(k) for k in BILLING_KEYS}


def _expanded(expand, field):
    return bool(expand) and any(p == field or p.startswith(field + '.') for p in expand)


# --------------------------------------------------------------------------------------
# PaymentIntent
_pi_init = R.PaymentIntent.__init__


def _pi_init_patched(self, payment_method_types=None, allowed_payment_method_types=None,
                     automatic_payment_methods=None, description=None, setup_future_usage=None,
                     **kwargs):
    # localstripe rejects `allowed_payment_method_types` (the 2026 API's create parameter,
    # which async-stripe 1.0 sends), `automatic_payment_methods`, `description` and
    # `setup_future_usage` ("Unexpected ..."), and drops the older `payment_method_types`:
    # accept and keep them.
    _pi_init(self, **kwargs)
    self.setup_future_usage = setup_future_usage
    self.allowed_payment_method_types = allowed_payment_method_types
    self.payment_method_types = (allowed_payment_method_types or payment_method_types
                                 or ['card'])
    self.automatic_payment_methods = None
    if isinstance(automatic_payment_methods, dict) and str(
            automatic_payment_methods.get('enabled')).lower() == 'true':
        self.automatic_payment_methods = {
            'enabled': True,
            'allow_redirects': automatic_payment_methods.get('allow_redirects', 'always')}
    self.description = description


R.PaymentIntent.__init__ = _pi_init_patched
_pi_export = R.PaymentIntent._export


def _pi_export_patched(self, expand=None):
    obj = _pi_export(self, expand=expand)
    obj['setup_future_usage'] = getattr(self, 'setup_future_usage', None)
    # Legacy `charges` list (removed from the API in 2022-11-15).
    obj.pop('charges', None)
    # `latest_charge` is an id string unless the caller asked for ?expand[]=latest_charge.
    if isinstance(obj.get('latest_charge'), dict) and not _expanded(expand, 'latest_charge'):
        obj['latest_charge'] = obj['latest_charge']['id']
    status = obj['status']
    # Required (non-Option) in async-stripe's PaymentIntent:
    obj['amount_capturable'] = self.amount if status == 'requires_capture' else 0
    obj['amount_received'] = self.amount if status == 'succeeded' else 0
    obj['confirmation_method'] = 'automatic'
    obj['payment_method_types'] = getattr(self, 'payment_method_types', None) or ['card']
    obj.setdefault('automatic_payment_methods', None)
    obj.setdefault('description', None)
    # ApiErrors requires `type`; declines are card errors with a decline_code in Stripe.
    err = obj.get('last_payment_error')
    if err:
        err = dict(err)
        if err.get('code') == 'card_declined':
            err['type'] = 'card_error'
            err.setdefault('decline_code', 'generic_decline')
        else:
            err['type'] = 'invalid_request_error'
        obj['last_payment_error'] = err
    return obj


R.PaymentIntent._export = _pi_export_patched

# --------------------------------------------------------------------------------------
# Charge
_charge_export = R.Charge._export


def _charge_export_patched(self, expand=None):
    obj = _charge_export(self, expand=expand)
    # Required in async-stripe's Charge: amount_captured, billing_details, disputed.
    obj['amount_captured'] = (self.amount if self.captured and self.status == 'succeeded'
                              else 0)
    obj['disputed'] = False
    if self.status == 'failed':
        obj['captured'] = False  # localstripe echoes the capture flag even for declines
    try:
        pm = R.PaymentMethod._api_retrieve(self.payment_method)
        raw = getattr(pm, 'billing_details', None)
    except UserError:
        raw = None
    obj['billing_details'] = _billing_details(raw)
    return obj


R.Charge._export = _charge_export_patched


def _charge_raise_failure(self):
    # Stripe answers a decline with type=card_error, a decline_code, and the PaymentIntent
    # and PaymentMethod embedded (localstripe: type=invalid_request_error, no objects).
    contents = {'code': self.failure_code, 'decline_code': 'generic_decline',
                'charge': self.id}
    if self.payment_intent:
        contents['payment_intent'] = R.PaymentIntent._api_retrieve(
            self.payment_intent)._export()
    try:
        contents['payment_method'] = R.PaymentMethod._api_retrieve(
            self.payment_method)._export()
    except UserError:
        pass
    error = UserError(402, self.failure_message, contents)
    error.body['error']['type'] = 'card_error'
    raise error


R.Charge._raise_failure = _charge_raise_failure

# --------------------------------------------------------------------------------------
# PaymentMethod: Stripe returns every billing_details key (async-stripe tolerates {}).
_pm_export = R.PaymentMethod._export


def _pm_export_patched(self, expand=None):
    obj = _pm_export(self, expand=expand)
    obj['billing_details'] = _billing_details(obj.get('billing_details'))
    return obj


R.PaymentMethod._export = _pm_export_patched

# --------------------------------------------------------------------------------------
# BalanceTransaction: `balance_type` is required by async-stripe.
_txn_export = R.BalanceTransaction._export


def _txn_export_patched(self, expand=None):
    obj = _txn_export(self, expand=expand)
    obj['balance_type'] = 'payments'
    return obj


R.BalanceTransaction._export = _txn_export_patched

# --------------------------------------------------------------------------------------
# Balance: `available` and `pending` are lists of {amount, currency, source_types}.
_balance_export = R.Balance._export


def _balance_export_patched(self, expand=None):
    obj = _balance_export(self)
    for key in ('available', 'pending'):
        if isinstance(obj.get(key), dict):
            obj[key] = [obj[key]]
    obj['object'] = 'balance'
    return obj


R.Balance._export = _balance_export_patched

# --------------------------------------------------------------------------------------
# Lists: Stripe filters by created[gt|gte|lt|lte] (any combination) and returns newest
# first. localstripe's charge list takes only created[gt] (400/500 otherwise) and the
# balance-transaction list takes no filter at all.


def _created_filter(created):
    if created is None:
        return lambda obj: True
    if not isinstance(created, dict):
        exact = R.try_convert_to_int(created)
        if not isinstance(exact, int):
            raise UserError(400, 'Invalid created')
        return lambda obj: obj.created == exact
    bounds = {}
    for op, value in created.items():
        value = R.try_convert_to_int(value)
        if op not in ('gt', 'gte', 'lt', 'lte') or not isinstance(value, int):
            raise UserError(400, 'Invalid created[%s]' % op)
        bounds[op] = value
    tests = {'gt': lambda c, v: c > v, 'gte': lambda c, v: c >= v,
             'lt': lambda c, v: c < v, 'lte': lambda c, v: c <= v}
    return lambda obj: all(tests[op](obj.created, v) for op, v in bounds.items())


def _list(cls, url, limit, starting_after, filters):
    li = R.List(url, limit=limit, starting_after=starting_after)
    items = [v for k, v in R.store.items() if k.startswith(cls.object + ':')]
    items = [v for v in items if all(f(v) for f in filters)]
    items.sort(key=lambda v: v.created, reverse=True)  # stable: ties keep insertion order
    li._list = items
    return li


def _charge_list(cls, url, customer=None, payment_intent=None, created=None, limit=None,
                 starting_after=None, **kwargs):
    if kwargs:
        raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()))
    filters = [_created_filter(created)]
    if customer is not None:
        filters.append(lambda c: c.customer == customer)
    if payment_intent is not None:
        filters.append(lambda c: c.payment_intent == payment_intent)
    return _list(cls, url, limit, starting_after, filters)


def _txn_list(cls, url, created=None, type=None, source=None, limit=None,
              starting_after=None, **kwargs):
    if kwargs:
        raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()))
    filters = [_created_filter(created)]
    if type is not None:
        filters.append(lambda t: t.type == type)
    if source is not None:
        filters.append(lambda t: t.source == source)
    return _list(cls, url, limit, starting_after, filters)


R.Charge._api_list_all = classmethod(_charge_list)
R.BalanceTransaction._api_list_all = classmethod(_txn_list)

# --------------------------------------------------------------------------------------
# Events: async-stripe requires `pending_webhooks`; `request` says which API request
# caused the event; `api_version` is the Stripe-Version the client sent (localstripe
# stamps 2017-08-15, which async-stripe's webhook parser warns about).
_current_request = contextvars.ContextVar('current_request', default=None)
_last_stripe_version = ['2017-08-15']
_event_init = R.Event.__init__


def _event_init_patched(self, type, data):
    _event_init(self, type, data)
    self._request = _current_request.get()
    self._api_version = _last_stripe_version[0]


R.Event.__init__ = _event_init_patched
_event_export = R.Event._export


def _event_export_patched(self, expand=None):
    obj = _event_export(self, expand=expand)
    obj['api_version'] = getattr(self, '_api_version', obj.get('api_version'))
    obj['pending_webhooks'] = sum(
        1 for w in webhooks._webhooks.values() if w.events is None or self.type in w.events)
    obj['request'] = getattr(self, '_request', None) or {'id': None, 'idempotency_key': None}
    return obj


R.Event._export = _event_export_patched

# --------------------------------------------------------------------------------------
# Idempotency-Key (localstripe ignores it): replay the first answer to a POST with the
# same key, as Stripe does, so retried creates do not charge twice. Same key with other
# parameters -> 400 idempotency_error; same key while the first is running -> 409.
_idempotent = {}


@web.middleware
async def stripe_request_middleware(request, handler):
    request_id = 'req_' + secrets.token_hex(7)
    version = request.headers.get('Stripe-Version')
    if version and request.path.startswith('/v1/'):
        _last_stripe_version[0] = version
    key = request.headers.get('Idempotency-Key') if request.method == 'POST' else None
    _current_request.set({'id': request_id, 'idempotency_key': key})

    if key is None:
        response = await handler(request)
    else:
        cache_key = (request.headers.get('Authorization', ''), key)
        # Stripe compares the parameters, not their order: async-stripe encodes metadata from a
        # hash map, whose order differs between two requests with the same content.
        params = sorted(urllib.parse.parse_qsl((await request.read()).decode(), keep_blank_values=True))
        fingerprint = hashlib.sha256((request.path + '?' + repr(params)).encode()).hexdigest()
        cached = _idempotent.get(cache_key)
        if cached is not None:
            if cached[0] != fingerprint:
                return _idempotency_error(400, 'Keys for idempotent requests can only be '
                                          'used with the same parameters they were first '
                                          'used with.')
            if cached[1] is None:
                return _idempotency_error(409, 'There is currently another in-progress '
                                          'request using this idempotency key.')
            status, body, content_type = cached[1]
            return web.Response(status=status, body=body, content_type=content_type,
                                headers={'Idempotent-Replayed': 'true',
                                         'Idempotency-Key': key,
                                         'Request-Id': request_id})
        _idempotent[cache_key] = (fingerprint, None)
        try:
            response = await handler(request)
        except BaseException:
            del _idempotent[cache_key]
            raise
        if response.status >= 500:
            del _idempotent[cache_key]
        else:
            _idempotent[cache_key] = (fingerprint, (response.status, response.body,
                                                    response.content_type))
        response.headers['Idempotency-Key'] = key
    response.headers['Request-Id'] = request_id
    return response


def _idempotency_error(status, message):
    return web.json_response(
        {'error': {'type': 'idempotency_error', 'message': message}}, status=status)


# --------------------------------------------------------------------------------------
# Webhook delivery: localstripe posts an event to its endpoints one after another with
# aiohttp's default five-minute timeout, so one endpoint that accepts and never answers (a
# test server shutting down) holds up every endpoint after it. Deliver to all endpoints at
# once, each with a short timeout, as Stripe's independent deliveries behave.
WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def _deliver(webhook, event, payload, signed_payload, logger):
    signature = hmac.new(webhook.secret.encode('utf-8'), signed_payload,
                         hashlib.sha256).hexdigest()
    headers = {'Content-Type': 'application/json; charset=utf-8',
               'Stripe-Signature': 't=%d,v1=%s' % (event.created, signature)}
    try:
        async with aiohttp.ClientSession(timeout=WEBHOOK_TIMEOUT) as session:
            async with session.post(webhook.url, data=payload, headers=headers) as r:
                outcome = ('successfully delivered' if 200 <= r.status < 300
                           else 'failed with response code %d' % r.status)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        outcome = 'failed: %s' % (e or 'timed out')
    logger.info('webhook "%s" to %s %s' % (event.type, webhook.url, outcome))


async def _send_webhook_concurrently(event):
    payload = json.dumps(event._export(), indent=2, sort_keys=True).encode('utf-8')
    signed_payload = b'%d.%s' % (event.created, payload)
    await asyncio.sleep(1)
    logger = logging.getLogger('aiohttp.access')
    targets = [w for w in webhooks._webhooks.values()
               if w.events is None or event.type in w.events]
    await asyncio.gather(*(_deliver(w, event, payload, signed_payload, logger) for w in targets))


webhooks._send_webhook = _send_webhook_concurrently

# Outermost, so it sees the responses localstripe's error middleware makes from UserError.
server.app.middlewares.insert(0, stripe_request_middleware)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit('usage: localstripe_launcher.py PORT [HOST]')
    port = int(sys.argv[1])
    host = sys.argv[2] if len(sys.argv) == 3 else '127.0.0.1'

    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))

    # Same logging as `localstripe`: access log and webhook deliveries on stderr.
    logger = logging.getLogger('aiohttp.access')
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logging.StreamHandler())
    web.run_app(server.app, sock=sock, access_log=logger, print=None)


if __name__ == '__main__':
    main()

"""API-key authentication. (Placeholder until the control-plane work lands.)"""

from rest_framework.authentication import BaseAuthentication


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        return None
